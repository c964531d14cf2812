"""sweep --jobs measures a run's memory before starting any and refuses a job count that would not fit."""
import pytest

from sddlib.run_memory import check_jobs_fit, train_images

PARAMS = dict(dataset="digit_mosaic", teacher="resnet8", student="resnet8", method="kd", M="[1,2,4]", batch_size=8,
              device="cpu")


@pytest.mark.slow  # trains two steps of each configuration in a subprocess
def test_a_job_count_that_would_not_fit_is_refused_in_one_sentence_naming_the_largest_run():
    """Each configuration measured on its own (a forked child each): the larger student, measured first, is the
    largest; one process's high-water mark would make the run measured last at least as large."""
    big = {**PARAMS, "student": "resnet32x4"}
    with pytest.raises(ValueError, match=r"^--jobs 100000 needs about 100000 x [\d.]+ GiB = .* \(resnet8-resnet32x4-"
                                         r"sd_kd-M124-seed0, measured\) but host memory has [\d.]+ GiB free; use "
                                         r"--jobs \d+ or fewer\.$"):
        check_jobs_fit([big, PARAMS], 100_000)


def test_train_images_follow_the_subset():
    assert train_images(PARAMS) == 8000 and train_images({**PARAMS, "subset": 300}) == 300
    assert train_images({"dataset": "cifar100"}) == 50_000
