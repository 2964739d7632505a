# Tests of `lowpeft demo` (lowpeft/demo.py) and the data it trains on (lowpeft/data): the demo runs end to end in a
# few steps (save, reload, merge, every check passing), the default command is the demo, the loss falls, a wrong
# reload is caught rather than reported as agreeing, bad arguments are named; the byte tokenizer round-trips any
# text and the batch sampler returns real windows of the text.
#
# Trade-off: the demo runs with --steps 5..40 instead of its default few hundred, which keeps this file around
# half a minute on 2 CPU cores while still exercising every step of the real command.
import argparse
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lowpeft
from lowpeft import cli, demo
from lowpeft.data import TEXT_NAME, ByteTokenizer, load_text, sample_windows

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


# ----------------------------------------------------------------------------------------------------
# the demo
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_demo_runs_end_to_end_and_keeps_the_adapter(capsys, tmp_path, device):
    output = tmp_path / "adapter"
    status = cli.main(["demo", "--steps", "5", "--device", device, "--no-progress", "--no-bench",
                       "--output", str(output)])
    out = capsys.readouterr().out
    assert status == 0, out
    for step in range(1, 7):
        assert f"[{step}/6]" in out
    assert "trainable params: " in out and " || all params: " in out and " || trainable%: " in out
    assert "reloaded: max |logits - trained model's logits|" in out and ": OK" in out
    assert "merged: max |logits - trained model's logits|" in out
    assert "all checks passed" in out
    assert sorted(os.listdir(output)) == ["adapter_config.json", "adapter_model.safetensors"]


def test_the_demo_is_the_default_command(capsys):
    status = cli.main(["--steps", "2", "--device", "cpu", "--no-progress", "--dropout", "0", "--rank", "4"])
    out = capsys.readouterr().out
    assert status == 0
    assert "fine-tuning 2 steps" in out and "LoRA r=4" in out and "all checks passed" in out


def test_demo_loss_falls(capsys):
    args = demo.parse_args(["--steps", "25", "--device", "cpu", "--no-progress", "--dropout", "0"])
    result = demo.run_demo(args)
    capsys.readouterr()
    assert result.ok
    assert len(result.losses) == 25
    assert result.loss_after < result.loss_before - 1.0
    assert sum(result.losses[-5:]) / 5 < result.losses[0] - 1.0


def test_demo_reports_a_reload_that_does_not_agree(capsys, monkeypatch):
    real_load_adapter = lowpeft.load_adapter

    def load_and_perturb(model, directory, *args, **kwargs):
        real_load_adapter(model, directory, *args, **kwargs)
        with torch.no_grad():
            next(p for name, p in model.named_parameters() if name.endswith("lora_B")).add_(0.5)
        return model

    monkeypatch.setattr(lowpeft, "load_adapter", load_and_perturb)
    status = cli.main(["demo", "--steps", "2", "--device", "cpu", "--no-progress", "--dropout", "0"])
    out = capsys.readouterr().out
    assert status == 1
    assert "reloaded: " in out and "MISMATCH" in out and "SOME CHECKS FAILED" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "argument --steps: expected a positive integer, got 0"),
        (["--rank", "-1"], "argument --rank: expected a positive integer, got -1"),
        (["--dropout", "1.0"], "argument --dropout: expected a float in [0, 1), got 1.0"),
        (["--lr", "0"], "argument --lr: expected a positive number, got 0.0"),
        (["--backend", "tpu"], "argument --backend: invalid choice: 'tpu'"),
        (["--device", "cpu", "--backend", "cuda"], "argument --backend: backend: 'cuda' was requested but cannot run on cpu"),
    ],
)
def test_demo_bad_arguments(capsys, argv, message):
    with pytest.raises(SystemExit) as raised:
        cli.main(["demo", *argv])
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


def test_demo_output_that_cannot_be_a_directory_is_refused_before_training(capsys, tmp_path):
    existing = tmp_path / "a-file"
    existing.write_text("x")
    for output, message in [
        (existing, f"--output: expected a directory to write into, got {str(existing)!r}, an existing file"),
        (existing / "adapter", f"--output: cannot write into the directory {str(existing / 'adapter')!r}"),
    ]:
        with pytest.raises(SystemExit) as raised:
            cli.main(["demo", "--output", str(output)])
        captured = capsys.readouterr()
        assert raised.value.code == 2 and message in captured.err and captured.out == ""


def test_demo_output_check_leaves_no_directory_behind(tmp_path):
    target = tmp_path / "new" / "adapter"
    demo.parse_args(["--output", str(target)])
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_demo_on_cuda_without_a_gpu_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        demo.parse_args(["--device", "cuda"])
    assert "argument --device: cuda was requested but torch sees no CUDA GPU" in capsys.readouterr().err


def test_parse_args_resolves_the_backend():
    args = demo.parse_args(["--device", "cpu", "--backend", "torch"])
    assert isinstance(args, argparse.Namespace) and args.resolved_backend == "torch"


# ----------------------------------------------------------------------------------------------------
# the shipped text and the byte tokenizer
# ----------------------------------------------------------------------------------------------------
def test_the_shipped_text_is_a_few_kilobytes_of_prose():
    text = load_text()
    assert TEXT_NAME == "river.txt"
    assert 3000 < len(text.encode("utf-8")) < 20000
    assert text.startswith("The River and the Lamplighter")


@settings(max_examples=30)
@given(st.text(max_size=200))
def test_byte_tokenizer_round_trips_any_text(text):
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode(text)
    assert ids.dtype == torch.int64 and ids.shape == (len(text.encode("utf-8")),)
    assert ids.numel() == 0 or (0 <= int(ids.min()) and int(ids.max()) < tokenizer.vocab_size)
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(ids.tolist()) == text


def test_byte_tokenizer_bad_input_is_named():
    tokenizer = ByteTokenizer()
    with pytest.raises(TypeError, match="text: expected a str, got bytes"):
        tokenizer.encode(b"abc")
    with pytest.raises(ValueError, match=r"ids: expected integers in \[0, 256\), got 256"):
        tokenizer.decode([65, 256])


@settings(max_examples=20)
@given(batch_size=st.sampled_from([1, 2, 7]), seq_len=st.sampled_from([1, 7, 123, 1000, 6000]),
       length=st.sampled_from([1, 5, 300]))
def test_sample_windows_are_windows_of_the_repeated_text(batch_size, seq_len, length):
    token_ids = torch.randint(0, 256, (length,), generator=torch.Generator().manual_seed(length))
    batch = sample_windows(token_ids, batch_size, seq_len, torch.Generator().manual_seed(seq_len))
    assert batch.shape == (batch_size, seq_len) and batch.dtype == torch.int64
    source = token_ids.repeat(-(-(seq_len + 1) // length) + 1).tolist()
    text = bytes(source)
    for window in batch.tolist():
        assert bytes(window) in text


def test_sample_windows_is_reproducible_and_checks_its_arguments():
    ids = ByteTokenizer().encode(load_text())
    first = sample_windows(ids, 3, 17, torch.Generator().manual_seed(5))
    assert torch.equal(first, sample_windows(ids, 3, 17, torch.Generator().manual_seed(5)))
    with pytest.raises(ValueError, match="batch_size: expected a positive int, got 0"):
        sample_windows(ids, 0, 17, torch.Generator())
    with pytest.raises(ValueError, match="seq_len: expected a positive int, got 2.5"):
        sample_windows(ids, 1, 2.5, torch.Generator())
    with pytest.raises(ValueError, match="token_ids: expected a non-empty 1-D tensor"):
        sample_windows(ids[:0], 1, 4, torch.Generator())
