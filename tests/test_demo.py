"""The demo's working folder: it replaces only an empty folder or an earlier demo run, never user data."""
import pytest

from nnunet_scribble.demo import DEMO_DATASET_ID, DEMO_MARKER, main, prepare_output


def test_demo_refuses_a_folder_with_other_contents(tmp_path):
    (tmp_path / "patient001.nii.gz").write_text("user data")
    with pytest.raises(SystemExit, match="is not an earlier nnunet_scribble_demo folder"):
        main(["--output", str(tmp_path)])
    assert (tmp_path / "patient001.nii.gz").read_text() == "user data"
    # a file where the folder should be is refused too
    with pytest.raises(SystemExit, match="is not an earlier nnunet_scribble_demo folder"):
        prepare_output(tmp_path / "patient001.nii.gz")
    assert (tmp_path / "patient001.nii.gz").is_file()
    # a log and a dataset folder of the demo's name do not make a demo folder: only the demo's marker does
    (tmp_path / "demo.log").write_text("")
    (tmp_path / "nnUNet_raw" / f"Dataset{DEMO_DATASET_ID:03d}_ScribbleDemo").mkdir(parents=True)
    with pytest.raises(SystemExit):
        prepare_output(tmp_path)
    assert (tmp_path / "patient001.nii.gz").is_file()


def test_demo_replaces_an_empty_or_earlier_demo_folder(tmp_path):
    new = prepare_output(tmp_path / "a" / "b")
    assert sorted(p.name for p in new.iterdir()) == [DEMO_MARKER]   # marked before anything else is written
    (new / DEMO_MARKER).unlink()
    assert prepare_output(new) == new                               # empty: reused
    (new / "demo.log").write_text("an earlier run, interrupted")
    (new / "nnUNet_raw" / f"Dataset{DEMO_DATASET_ID:03d}_ScribbleDemo").mkdir(parents=True)
    assert prepare_output(new) == new                               # an earlier demo run: replaced
    assert sorted(p.name for p in new.iterdir()) == [DEMO_MARKER]
