"""The peer of ``startup.py``: transformers' ``run_mae.py`` data path and ``Trainer`` on an image folder.

A ``datasets`` imagefolder, torchvision's RandomResizedCrop (bicubic, MAE's scale 0.2-1) + flip +
normalise as a ``set_transform``, ``ViTMAEForPreTraining`` of our ``tiny`` size, transformers' ``Trainer``.
Writes ``time.time()`` at the end of the first optimizer step to ``<output>/first_step``.

    python benchmarks/_peer_mae.py FOLDER OUTPUT [--resolution 160] [--batch-size 32] [--num-workers 2]
"""

import argparse
import time
from pathlib import Path

import torch
from datasets import load_dataset
from torchvision.transforms import (
    Compose,
    InterpolationMode,
    Normalize,
    RandomHorizontalFlip,
    RandomResizedCrop,
    ToTensor,
)
from transformers import Trainer, TrainerCallback, TrainingArguments, ViTMAEConfig, ViTMAEForPreTraining


class FirstStep(TrainerCallback):
    def __init__(self, path: Path):
        self.path = path

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:
            self.path.write_text(repr(time.time()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("output", type=Path)
    parser.add_argument("--resolution", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    dataset = load_dataset("imagefolder", data_dir=args.folder, split="train")
    transforms = Compose(
        [
            RandomResizedCrop(args.resolution, scale=(0.2, 1.0), interpolation=InterpolationMode.BICUBIC),
            RandomHorizontalFlip(),
            ToTensor(),
            Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )

    def preprocess(examples):
        examples["pixel_values"] = [transforms(image.convert("RGB")) for image in examples["image"]]
        return examples

    dataset.set_transform(preprocess)

    def collate(examples):
        return {"pixel_values": torch.stack([example["pixel_values"] for example in examples])}

    config = ViTMAEConfig(
        image_size=args.resolution, patch_size=16, hidden_size=192, num_hidden_layers=12,
        num_attention_heads=3, intermediate_size=768, decoder_hidden_size=128, decoder_num_hidden_layers=4,
        decoder_num_attention_heads=4, decoder_intermediate_size=512, mask_ratio=0.75, norm_pix_loss=True,
    )  # fmt: skip
    model = ViTMAEForPreTraining(config)
    training_args = TrainingArguments(
        output_dir=str(args.output), per_device_train_batch_size=args.batch_size,
        dataloader_num_workers=args.num_workers, num_train_epochs=args.epochs, learning_rate=1.875e-5,
        weight_decay=0.05, warmup_steps=32, lr_scheduler_type="cosine", remove_unused_columns=False,
        save_strategy="no", report_to=[], logging_steps=10, dataloader_drop_last=True, use_cpu=True,
    )  # fmt: skip
    trainer = Trainer(
        model=model, args=training_args, train_dataset=dataset, data_collator=collate,
        callbacks=[FirstStep(args.output / "first_step")],
    )  # fmt: skip
    trainer.train()


if __name__ == "__main__":
    main()
