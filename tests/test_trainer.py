# transformers' Trainer with lowpeft layers: a tiny Llama and a tiny GPT-2 (from configs) train with
# gradient_accumulation_steps=4, the loss falls, and the adapter saved after training reloads into a fresh
# model giving the same logits; lowpeft.SaveAdapterCallback puts a PEFT-loadable adapter in every checkpoint.
#
# Trade-off: a repeated short token pattern gives a loss that must fall within a few dozen steps on the CPU.
import pytest
import safetensors.torch
import torch

import lowpeft

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

USE_CPU = not torch.cuda.is_available()


def tiny_llama():
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=61, max_position_embeddings=64, initializer_range=0.3))


def tiny_gpt2():
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=2, vocab_size=61, n_positions=64, bos_token_id=0, eos_token_id=0,
        initializer_range=0.3))


class _Patterns(torch.utils.data.Dataset):
    def __init__(self, count=32, length=16):
        generator = torch.Generator().manual_seed(0)
        starts = torch.randint(0, 50, (count, 1), generator=generator)
        self.ids = (starts + torch.arange(length) % 5) % 61

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


class _Losses(transformers.TrainerCallback):
    def __init__(self):
        self.losses = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_trainer_with_gradient_accumulation_trains_saves_and_reloads(make, tmp_path):
    model = lowpeft.apply(make(), lowpeft.LoRAConfig(r=8, alpha=16, dropout=0.05, target_modules="all-linear"))
    losses = _Losses()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=2, gradient_accumulation_steps=4,
        learning_rate=1e-2, lr_scheduler_type="constant", num_train_epochs=4, logging_steps=2, save_strategy="no", report_to=[],
        use_cpu=USE_CPU, seed=0, disable_tqdm=True,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Patterns(), callbacks=[losses])
    trainer.train()
    assert trainer.state.global_step == 4 * 32 // (2 * 4)
    assert len(losses.losses) >= 4 and losses.losses[-1] < 0.7 * losses.losses[0], losses.losses
    lowpeft.save_adapter(model, tmp_path / "adapter")
    model.eval()
    ids = _Patterns().ids[:2].to(model.device)
    expected = model(ids).logits
    reloaded = lowpeft.load_adapter(make().to(model.device).eval(), tmp_path / "adapter")
    torch.testing.assert_close(reloaded(ids).logits, expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------------
# lowpeft.SaveAdapterCallback: every checkpoint (and the output directory at the end) ships the adapter
# ------------------------------------------------------------------------------------------------------
def _eval_logits(model, ids):
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(ids.to(model.device)).logits
    model.train(was_training)
    return logits


class _LogitsAtSave(transformers.TrainerCallback):
    """Listed after SaveAdapterCallback: the model's eval-mode logits at each checkpoint, by global step."""

    def __init__(self, ids):
        self.ids = ids
        self.logits = {}

    def on_save(self, args, state, control, model=None, **kwargs):
        self.logits[state.global_step] = _eval_logits(model, self.ids)


def _randomise_adapter(model):
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.normal_(std=0.2)
    return model


@pytest.fixture
def single_process_group():
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_save_adapter_callback_ships_the_adapter_with_every_checkpoint(make, tmp_path):
    peft = pytest.importorskip("peft")
    model = lowpeft.apply(make(), lowpeft.LoRAConfig(r=8, alpha=16, dropout=0.05, target_modules="all-linear"))
    ids = _Patterns().ids[:2]
    at_save = _LogitsAtSave(ids)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=2, learning_rate=1e-2, max_steps=4,
        save_steps=2, report_to=[], use_cpu=USE_CPU, seed=0, disable_tqdm=True,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Patterns(count=8),
                                   callbacks=[lowpeft.SaveAdapterCallback(), at_save])
    trainer.train()
    assert sorted(at_save.logits) == [2, 4]
    assert not torch.allclose(at_save.logits[2], at_save.logits[4])   # so each load is told apart
    expected = {tmp_path / "run" / "checkpoint-2" / "adapter": at_save.logits[2],
                tmp_path / "run" / "checkpoint-4" / "adapter": at_save.logits[4],
                tmp_path / "run" / "adapter": _eval_logits(model, ids)}
    for directory, logits in expected.items():
        assert sorted(p.name for p in directory.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
        ours = lowpeft.load_adapter(make().to(model.device).eval(), directory)
        torch.testing.assert_close(_eval_logits(ours, ids), logits, rtol=1e-5, atol=1e-5)
        theirs = peft.PeftModel.from_pretrained(make().to(model.device).eval(), str(directory))
        torch.testing.assert_close(_eval_logits(theirs, ids), logits, rtol=1e-5, atol=1e-5)
    # Trainer's own files stay as Trainer wrote them: no adapter_config.json in the checkpoint root.
    root = {p.name for p in (tmp_path / "run" / "checkpoint-2").iterdir()}
    assert "model.safetensors" in root and "adapter_config.json" not in root, root


def test_save_adapter_callback_unwraps_ddp_and_torch_compile(tmp_path, single_process_group):
    model = _randomise_adapter(lowpeft.apply(tiny_llama(), lowpeft.LoRAConfig(r=4, target_modules=["q_proj", "v_proj"])))
    wrapped = torch.compile(torch.nn.parallel.DistributedDataParallel(model))
    callback = lowpeft.SaveAdapterCallback(directory=tmp_path / "final")
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "run"), report_to=[], use_cpu=True)
    state = transformers.TrainerState(global_step=3)
    (tmp_path / "run" / "checkpoint-3").mkdir(parents=True)
    callback.on_train_begin(args, state, None, model=wrapped)
    callback.on_save(args, state, None, model=wrapped)
    callback.on_train_end(args, state, None, model=wrapped)
    ids = _Patterns().ids[:2]
    for directory in (tmp_path / "run" / "checkpoint-3" / "adapter", tmp_path / "final"):
        reloaded = lowpeft.load_adapter(tiny_llama().eval(), directory)
        torch.testing.assert_close(_eval_logits(reloaded, ids), _eval_logits(model, ids), rtol=0, atol=0)


def test_trainer_trains_lora_over_an_int8_base_and_the_callback_ships_the_adapter(tmp_path):
    # QLoRA-style: quantize_base, then apply; Trainer's optimizer sees only the adapter, its checkpoints hold the int8
    # weights, and SaveAdapterCallback's adapter reloads into a freshly quantized model to the same logits.
    model = lowpeft.apply(lowpeft.quantize_base(tiny_llama()), lowpeft.LoRAConfig(r=4, alpha=8, dropout=0.05))
    losses = _Losses()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, max_steps=6, learning_rate=2e-2,
        logging_steps=1, save_steps=3, report_to=[], use_cpu=USE_CPU, seed=0, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Patterns(),
                                   callbacks=[losses, lowpeft.SaveAdapterCallback()])
    trainer.train()
    assert losses.losses[-1] < losses.losses[0]
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.int8
    ids = _Patterns()[0]["input_ids"][None].to(model.device)
    model.eval()
    with torch.no_grad():
        expected = model(ids).logits
    reloaded = lowpeft.apply(lowpeft.quantize_base(tiny_llama()), lowpeft.LoRAConfig(r=4, alpha=8, dropout=0.05))
    lowpeft.load_adapter(reloaded.to(model.device), tmp_path / "run" / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(ids).logits, expected, rtol=1e-5, atol=1e-5)


def test_save_adapter_callback_refuses_a_model_without_lowpeft_adapters_before_training(tmp_path):
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=2,
                                          max_steps=2, save_steps=1, report_to=[], use_cpu=USE_CPU, disable_tqdm=True)
    trainer = transformers.Trainer(model=tiny_llama(), args=args, train_dataset=_Patterns(count=8),
                                   callbacks=[lowpeft.SaveAdapterCallback()])
    with pytest.raises(ValueError, match=r"model: SaveAdapterCallback needs a model with lowpeft adapters .* "
                                         r"got a LlamaForCausalLM with none"):
        trainer.train()
    assert trainer.state.global_step == 0 and not list((tmp_path / "run").glob("checkpoint-*"))


def test_save_adapter_callback_refuses_fsdp2_sharded_adapters(tmp_path, single_process_group):
    from torch.distributed.fsdp import fully_shard

    model = lowpeft.apply(tiny_llama(), lowpeft.LoRAConfig(r=4, target_modules=["q_proj"]))
    for block in model.model.layers:
        fully_shard(block)
    fully_shard(model)
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "run"), report_to=[], use_cpu=True)
    with pytest.raises(NotImplementedError, match="cannot gather adapter parameters sharded across processes"):
        lowpeft.SaveAdapterCallback().on_train_begin(args, transformers.TrainerState(), None, model=model)


def test_save_adapter_callback_accepts_fsdp1_that_leaves_each_process_the_whole_adapter(tmp_path,
                                                                                        single_process_group):
    # One process: FSDP1 runs NO_SHARD, so the process holds the whole adapter and the callback may write it.
    from torch.distributed.fsdp import FullyShardedDataParallel

    model = lowpeft.apply(tiny_llama(), lowpeft.LoRAConfig(r=4, target_modules=["q_proj"]))
    expected = {k: v.detach().clone() for k, v in lowpeft.io.adapter_tensors(model).items()}
    wrapped = FullyShardedDataParallel(model, device_id=torch.device("cpu"), use_orig_params=True)
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "run"), report_to=[], use_cpu=True)
    callback = lowpeft.SaveAdapterCallback(directory=tmp_path / "out")
    callback.on_train_begin(args, transformers.TrainerState(), None, model=wrapped)
    callback.on_train_end(args, transformers.TrainerState(), None, model=wrapped)
    saved = safetensors.torch.load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    assert set(saved) == set(expected) and all(torch.equal(saved[k], v) for k, v in expected.items())


def test_shard_shaped_adapter_parameters_are_refused_not_saved(tmp_path):
    # What FSDP1 (use_orig_params) leaves in the layers when a process holds a shard: flat views of its part. A
    # callback that sees the model inside FSDP1's wrapper (as Trainer's do) cannot tell from the modules.
    model = lowpeft.apply(tiny_llama(), lowpeft.LoRAConfig(r=4, target_modules=["q_proj"]))
    layer = model.model.layers[0].self_attn.q_proj
    layer.lora_A.data = layer.lora_A.data.flatten()[: layer.lora_A.numel() // 2]
    with pytest.raises(ValueError, match=r"sharded across processes here \(parameters shaped as local shards"):
        lowpeft.save_adapter(model, tmp_path / "a")
    assert not (tmp_path / "a").exists()
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "run"), report_to=[], use_cpu=True)
    with pytest.raises(NotImplementedError, match="shaped as local shards"):
        lowpeft.SaveAdapterCallback().on_train_begin(args, transformers.TrainerState(), None, model=model)


def test_save_adapter_callback_refuses_deepspeed_zero3_partitioned_parameters(tmp_path):
    # ZeRO-3 marks each partitioned parameter with ds_id (its data is gathered only inside the forward).
    model = lowpeft.apply(tiny_llama(), lowpeft.LoRAConfig(r=4, target_modules=["q_proj"]))
    for name, param in model.named_parameters():
        if "lora_" in name:
            param.ds_id = 0
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "run"), report_to=[], use_cpu=True)
    with pytest.raises(NotImplementedError, match=r"DeepSpeed ZeRO-3 partitioned parameters: .*lora_A"):
        lowpeft.SaveAdapterCallback().on_train_begin(args, transformers.TrainerState(), None, model=model)


def test_save_adapter_callback_writes_only_where_trainer_saves(tmp_path):
    import types

    model = lowpeft.apply(tiny_llama(), lowpeft.LoRAConfig(r=4, target_modules=["q_proj"]))
    state = transformers.TrainerState(global_step=5)
    callback = lowpeft.SaveAdapterCallback()
    not_main = types.SimpleNamespace(should_save=False, output_dir=str(tmp_path / "run"))
    callback.on_save(not_main, state, None, model=model)
    callback.on_train_end(not_main, state, None, model=model)
    assert not (tmp_path / "run").exists()
    main = types.SimpleNamespace(should_save=True, output_dir=str(tmp_path / "run"))
    with pytest.raises(FileNotFoundError, match="expected Trainer's checkpoint folder .*checkpoint-5"):
        callback.on_save(main, state, None, model=model)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kwargs, error, message", [
    ({"subfolder": ""}, ValueError, "subfolder: expected a relative folder name"),
    ({"subfolder": "/abs"}, ValueError, "subfolder: expected a relative folder name"),
    ({"subfolder": "../up"}, ValueError, "subfolder: expected a relative folder name"),
    ({"subfolder": 3}, TypeError, "subfolder: expected a str, got int"),
    ({"directory": 3}, TypeError, "directory: expected None, a str or an os.PathLike, got int"),
    ({"adapter_name": "a.b"}, ValueError, "adapter_name: expected a non-empty string"),
])
def test_save_adapter_callback_validates_its_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        lowpeft.SaveAdapterCallback(**kwargs)


def test_save_adapter_callback_without_transformers_is_an_import_error_naming_it():
    import subprocess
    import sys

    probe = ("import sys; sys.modules['transformers'] = None\n"
             "import lowpeft\nfrom lowpeft import *\n"
             "try:\n    SaveAdapterCallback()\nexcept ImportError as error:\n    print('ERROR', error)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "ERROR lowpeft.SaveAdapterCallback is a transformers TrainerCallback and needs transformers" in out, out
