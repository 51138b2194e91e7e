"""The training log's loss: each row is the mean over the step's gradient-accumulation micro-batches (and processes),
as diffusers' scripts log it, not the last micro-batch's."""

import json

import torch
from torch import nn

from colordiff.training.config import TrainConfig
from colordiff.training.loop import make_accelerator, train

VALUES = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]  # every subset has its own mean


class Values(torch.utils.data.Dataset):
    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return len(VALUES)

    def __getitem__(self, index: int) -> dict:
        return {"value": torch.tensor(VALUES[index]), "index": index}


class ValueLossTask:
    """A micro-batch's loss is the mean of its examples' values (plus 0 x a weight, so that it has a gradient)."""

    def __init__(self):
        self.dataset = Values()
        self.weight = nn.Linear(1, 1)

    def trainable(self) -> dict:
        return {"weight": self.weight}

    def loss(self, modules, batch):
        return modules["weight"].weight.sum() * 0.0 + batch["value"].mean()

    def validate(self, modules, config):
        return None

    def export(self, modules, path):
        path.mkdir(parents=True, exist_ok=True)


def test_logged_loss_is_the_mean_over_the_accumulated_micro_batches(tmp_path, fresh_accelerate):
    config = TrainConfig(output_dir=str(tmp_path), train_batch_size=1, gradient_accumulation_steps=4,
                         max_train_steps=2, checkpointing_steps=100, validation_images=[], report_to="none",
                         log_sample_indices=True)
    train(config, ValueLossTask(), make_accelerator(config))
    seen = [json.loads(line) for line in (tmp_path / "sample_indices.rank0.jsonl").read_text().splitlines()]
    logged = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged] == [1, 2]
    for row in logged:
        values = [VALUES[i] for s in seen if s["step"] == row["step"] for i in s["index"]]
        assert len(values) == 4  # the step's four micro-batches of one example
        assert row["loss"] == sum(values) / 4
