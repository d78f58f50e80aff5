"""Rank 0's printed lines (scalekit.training.rank_output) and the trackers' plumbing
(scalekit.training.tracking): a TensorBoard writer travels as its recipe, side-effect
folders are checked on rank 0 and taken from the notebook's working directory."""

from __future__ import annotations

import os
import pickle
import sys
import threading

import cloudpickle
import pytest
from skorch.callbacks import Checkpoint, TensorBoard, TrainEndCheckpoint

from scalekit.training.rank_output import LineSplitter, forwarding
from scalekit.training.tracking import (
    CallbackTargetError,
    RankZeroWriter,
    check_targets,
    dumps_by_value,
    resolve_folders,
)


def test_only_whole_lines_travel_and_a_carriage_return_rewrites_the_line():
    sent = []
    lines = LineSplitter("stdout", lambda stream, text: sent.append((stream, text)))
    lines.write("  epoch  train_loss\n---")
    lines.write("----\n      1  0.5\n")
    lines.write("\r 10%|#   |\r 50%|#####|\r")  # a bar that redraws itself ...
    lines.write("          \r")  # ... and erases itself
    lines.close()
    assert sent == [("stdout", "  epoch  train_loss"), ("stdout", "-------\n      1  0.5")]
    assert lines.sent == 3
    last = LineSplitter("stderr", lambda stream, text: sent.append((stream, text)))
    last.write("no newline at the end")
    last.close()
    assert sent[-1] == ("stderr", "no newline at the end")


def test_forwarding_takes_the_training_threads_output_only():
    sent = []
    other = []

    def elsewhere():
        other.append(sys.stdout)
        print("from another thread")

    original = sys.stdout
    with forwarding(lambda stream, text: sent.append((stream, text))):
        print("row 1")
        print("a warning", file=sys.stderr)
        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join()
    assert sys.stdout is original
    assert sent == [("stdout", "row 1"), ("stderr", "a warning")]


def test_a_summary_writer_travels_as_its_recipe_and_opens_only_where_it_logs(tmp_path,
                                                                            monkeypatch):
    from torch.utils.tensorboard import SummaryWriter

    monkeypatch.chdir(tmp_path)
    writer = SummaryWriter("runs/a", flush_secs=7)
    with pytest.raises(TypeError):
        cloudpickle.dumps(writer)  # a thread and an open file: it cannot travel as it is
    shipped = pickle.loads(dumps_by_value(TensorBoard(writer)))
    remote = shipped.writer
    assert isinstance(remote, RankZeroWriter) and not remote.opened
    assert remote.log_dir == str(tmp_path / "runs" / "a")  # the notebook's folder
    assert remote.options["flush_secs"] == 7
    before = set(os.listdir(tmp_path / "runs" / "a"))
    remote.close()  # a rank that never logged opens nothing
    assert set(os.listdir(tmp_path / "runs" / "a")) == before
    remote.add_scalar("x", 1.0, global_step=1)
    remote.close()
    assert len(set(os.listdir(tmp_path / "runs" / "a")) - before) == 1
    writer.close()


def test_relative_checkpoint_folders_are_the_notebooks(tmp_path):
    cp = Checkpoint(dirname="ckpt")
    resolve_folders(cp, str(tmp_path))
    assert cp.dirname == str(tmp_path / "ckpt")
    here = Checkpoint()  # dirname="": skorch writes into the working directory
    resolve_folders(here, str(tmp_path))
    assert here.dirname == str(tmp_path)
    end = TrainEndCheckpoint(dirname="end").initialize()
    resolve_folders(end, str(tmp_path))
    assert end.checkpoint_.dirname == str(tmp_path / "end")
    absolute = Checkpoint(dirname="/abs/ckpt")
    resolve_folders(absolute, str(tmp_path))
    assert absolute.dirname == "/abs/ckpt"


@pytest.mark.parametrize("folder", ["/sys/kernel", "FILE/below-a-file"])
def test_a_folder_rank_zero_cannot_write_is_a_clear_error(tmp_path, folder):
    (tmp_path / "FILE").write_text("")
    folder = folder.replace("FILE", str(tmp_path / "FILE"))
    with pytest.raises(CallbackTargetError) as info:
        check_targets("cp", Checkpoint(dirname=folder), "tcp://10.0.0.1:1234")
    message = str(info.value)
    assert f"callback 'cp' (Checkpoint) cannot write to {folder!r}" in message
    assert "tcp://10.0.0.1:1234" in message
    check_targets("ok", Checkpoint(dirname=str(tmp_path / "fine")), "w")  # creates it
    assert (tmp_path / "fine").is_dir() and not os.listdir(tmp_path / "fine")
