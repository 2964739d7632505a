# transformers' Trainer with lowpeft layers: a tiny Llama and a tiny GPT-2 (from configs) train with
# gradient_accumulation_steps=4, the loss falls, and the adapter saved after training reloads into a fresh
# model giving the same logits.
#
# Trade-off: a repeated short token pattern gives a loss that must fall within a few dozen steps on the CPU.
import pytest
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
