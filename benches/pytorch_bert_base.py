"""PyTorch peer of the GPU check's BERT-base forward: eager bf16, the same shapes, on the same GPU.

    python3 benches/pytorch_bert_base.py          # prints one JSON line

HF transformers' BertModel with random weights (bert-base config), `.to(cuda, bfloat16)`, eval mode,
inference mode, eager attention; random token ids, batch 32 x 128, no padding. CUDA events around
each forward; median of 10 after 3 warm-ups. scripts/gpu-check runs it next to `admix gpu-check`.
"""
import json, statistics

import torch
from transformers import BertConfig, BertModel


def main():
    torch.manual_seed(0)
    model = BertModel(BertConfig(attn_implementation="eager"), add_pooling_layer=False)
    model = model.to("cuda", torch.bfloat16).eval()
    ids = torch.randint(0, 30522, (32, 128), device="cuda")
    mask = torch.ones_like(ids)
    times = []
    with torch.inference_mode():
        for i in range(13):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(input_ids=ids, attention_mask=mask)
            end.record()
            torch.cuda.synchronize()
            if i >= 3:
                times.append(start.elapsed_time(end))
    print(json.dumps({"pytorch": torch.__version__, "device": torch.cuda.get_device_name(),
                      "bert_base_forward_bf16_ms": statistics.median(times)}))


if __name__ == "__main__":
    main()
