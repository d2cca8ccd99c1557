"""Writes a bf16 copy of a Hugging Face model directory (config.json, tokenizer.json,
model.safetensors with every F32 tensor rounded to BF16, round-to-nearest-even): half the bytes,
so MiniLM (91 MB) fits the GPU machine's 64 MiB carry beside the compressed admix binary. admix
reads BF16 safetensors as it reads F32 ones.

    python3 scripts/bf16-model.py IN_DIR OUT_DIR

Needs numpy only (the safetensors format is written by hand: 8-byte header length, JSON header,
raw little-endian data).
"""
import json, os, shutil, struct, sys

import numpy as np


def to_bf16(a):
    """float32 → bfloat16 bits, round to nearest even (NaN stays NaN)."""
    u = a.astype(np.float32).view(np.uint32)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(a), np.uint16(0x7FC0), rounded)


def main(src, dst):
    with open(os.path.join(src, "model.safetensors"), "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out_header, blobs, offset = {}, [], 0
    for name, info in header.items():
        if name == "__metadata__":
            out_header[name] = info
            continue
        a, b = info["data_offsets"]
        raw = data[a:b]
        if info["dtype"] == "F32":
            raw = to_bf16(np.frombuffer(raw, dtype="<f4")).astype("<u2").tobytes()
            dtype = "BF16"
        else:
            dtype = info["dtype"]
        out_header[name] = {"dtype": dtype, "shape": info["shape"], "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(out_header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    os.makedirs(dst, exist_ok=True)
    tmp = os.path.join(dst, "model.safetensors.tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for b in blobs:
            f.write(b)
    os.replace(tmp, os.path.join(dst, "model.safetensors"))
    for name in ("config.json", "tokenizer.json"):
        shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: bf16-model.py IN_DIR OUT_DIR")
    main(sys.argv[1], sys.argv[2])
