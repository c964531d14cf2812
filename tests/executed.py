"""Checks of an executed notebook as its reader sees it (used by the tests that run the notebooks with papermill)."""
import re

PICTURE_CALLS = re.compile(r"\b(plot_\w+|show_run_figures?|draw_\w+)\(")
MAX_TEXT_LINES = 25


def outputs_text(output) -> str:
    if output["output_type"] == "stream":
        return "".join(output["text"])
    data = output.get("data", {})
    return "".join(data.get("text/plain", "")) if "text/html" not in data and "image/png" not in data else ""


def check_readable(nb: dict, max_lines: int = MAX_TEXT_LINES) -> None:
    """Every cell that draws a picture shows it as image/png; no output is the text '<Figure size ...>' in its
    place; no cell's text output runs past `max_lines` lines; no progress-bar residue."""
    for k, cell in enumerate(c for c in nb["cells"] if c["cell_type"] == "code"):
        source = "".join(cell["source"])
        outputs = cell.get("outputs", [])
        text = "".join(outputs_text(o) for o in outputs)
        where = f"code cell {k} ({source.splitlines()[0][:60] if source else ''})"
        assert "<Figure size" not in text, f"{where} printed a figure's repr instead of the picture"
        if PICTURE_CALLS.search(source):
            assert any("image/png" in o.get("data", {}) for o in outputs), f"{where} shows no picture"
        assert text.count("\n") <= max_lines, f"{where} prints {text.count(chr(10))} lines:\n{text[:3000]}"
        assert "<progress" not in str(outputs), f"{where} left a progress bar"
