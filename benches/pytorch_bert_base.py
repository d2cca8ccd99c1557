"""PyTorch peer of the GPU check's BERT-base numbers: eager bf16, the same shapes, on the same GPU.

    python3 benches/pytorch_bert_base.py          # prints one JSON line

HF transformers' BertModel with random weights (bert-base config), eval attention "eager", random
token ids, batch 32 x 128, no padding; CUDA events around each run, median of 10 after 3 warm-ups.
- forward: the model `.to(cuda, bfloat16)`, inference mode;
- adapter training step: f32 weights under bf16 autocast, encoder frozen, a seq_bn bottleneck
  (768 -> 48, ReLU, -> 768, residual) after every layer's output projection and a 2-layer tanh head
  trainable, dropout 0.1, cross-entropy, backward, torch AdamW (the adapters package is not on the
  GPU machines, so the adapters are written here; the shapes and FLOPs are AdapterHub's seq_bn).
"""
import json, statistics

import torch
from transformers import BertConfig, BertModel


def timed(fn, reps=10, warmup=3):
    times = []
    for i in range(warmup + reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end))
    return statistics.median(times)


class Bottleneck(torch.nn.Module):
    def __init__(self, dense, h=768, r=16):
        super().__init__()
        self.dense = dense
        self.down = torch.nn.Linear(h, h // r)
        self.up = torch.nn.Linear(h // r, h)

    def forward(self, x):
        y = self.dense(x)
        return y + self.up(torch.relu(self.down(y)))


def main():
    torch.manual_seed(0)
    ids = torch.randint(0, 30522, (32, 128), device="cuda")
    mask = torch.ones_like(ids)

    model = BertModel(BertConfig(attn_implementation="eager"), add_pooling_layer=False)
    model = model.to("cuda", torch.bfloat16).eval()
    with torch.inference_mode():
        forward = timed(lambda: model(input_ids=ids, attention_mask=mask))

    model = BertModel(BertConfig(attn_implementation="eager"), add_pooling_layer=False).cuda().train()
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in model.encoder.layer:
        layer.output.dense = Bottleneck(layer.output.dense).cuda()
    head = torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(768, 768), torch.nn.Tanh(),
                               torch.nn.Dropout(0.1), torch.nn.Linear(768, 2)).cuda()
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    labels = torch.arange(32, device="cuda") % 2

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            cls = model(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
            loss = torch.nn.functional.cross_entropy(head(cls).float(), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    train = timed(step)
    print(json.dumps({"pytorch": torch.__version__, "device": torch.cuda.get_device_name(),
                      "bert_base_forward_bf16_ms": forward, "bert_base_adapter_train_step_bf16_autocast_ms": train}))


if __name__ == "__main__":
    main()
