#!/usr/bin/env python3
"""Writes the GGUF test fixtures in tests/fixtures/gguf/ with pip `gguf` (0.19.0) and numpy.

  /root/.cache/kvrun/venv-tools/bin/python tools/make_gguf_fixtures.py

Files (all small; tests/gguf_test.cpp reads them):
  types.gguf        v3, default alignment 32: one or two tensors of every ggml type kvrun
                    dequantizes ("quant.<T>" quantized by gguf-py from random normals where
                    gguf-py can quantize T, "rand.<T>" random valid block bytes with finite
                    half scales for every block type, F16/BF16/F32 with subnormals, +-0, inf,
                    NaN), a 3-D tensor, and metadata of every value type incl. nested arrays.
  types.expected.f32  gguf-py's `gguf.quants.dequantize` of each tensor of types.gguf, in file
                    order, concatenated as little-endian float32.
  align64.gguf      v3 with general.alignment = 64 and tensors whose sizes are not multiples of 64.
  align64.expected.f32
  v2.gguf           align64.gguf with the version field set to 2 (v2 and v3 share the layout
                    for little-endian files; gguf-py only writes v3).
"""
import os
import struct
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T, GGUFValueType as V
from gguf.quants import quantize, dequantize

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "gguf"
RNG = np.random.default_rng(20250717)

# ggml block types: (elements, bytes) per block, byte offsets of the fp16 scales in a block.
BLOCK_TYPES = {
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.Q2_K: [80, 82],
    T.Q3_K: [108],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
}
QUANTIZABLE = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]


def finite_halves(n):
    """n random finite fp16 values (normal and subnormal, both signs), as uint16."""
    while True:
        h = RNG.integers(0, 1 << 16, size=n, dtype=np.uint16)
        bad = (h & 0x7C00) == 0x7C00
        if not bad.any():
            return h
        h[bad] &= 0xBFFF  # clear the top exponent bit: finite
        return h


def random_blocks(qtype, rows, cols):
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    nblocks = rows * cols // block
    b = RNG.integers(0, 256, size=(nblocks, size), dtype=np.uint8)
    for off in BLOCK_TYPES[qtype]:
        b[:, off : off + 2] = finite_halves(nblocks).view(np.uint8).reshape(nblocks, 2)
    return b.reshape(rows, cols // block * size)


def special_floats(n):
    x = RNG.standard_normal(n).astype(np.float32)
    x[:8] = [0.0, -0.0, np.inf, -np.inf, 1e-40, -3e-45, 65504.0, 6e-8]
    return x


def add_metadata(w):
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_float32("test.f32", 0.1)
    w.add_bool("test.bool_true", True)
    w.add_bool("test.bool_false", False)
    w.add_string("test.string", "h\u00e9llo w\u00f6rld \u2713 \u65e5\u672c\u8a9e \U0001f642")
    w.add_uint64("test.u64", 18446744073709551615)
    w.add_uint64("test.u64_small", 7)
    w.add_int64("test.i64", -9223372036854775807 - 1)
    w.add_float64("test.f64", 3.141592653589793)
    w.add_key_value("test.arr_u8", [1, 2, 255], V.ARRAY, sub_type=V.UINT8)
    w.add_key_value("test.arr_i8", [-1, 2, -128], V.ARRAY, sub_type=V.INT8)
    w.add_key_value("test.arr_u16", [1, 65535], V.ARRAY, sub_type=V.UINT16)
    w.add_key_value("test.arr_i16", [-32768, 5], V.ARRAY, sub_type=V.INT16)
    w.add_key_value("test.arr_u32", [0, 4294967295], V.ARRAY, sub_type=V.UINT32)
    w.add_key_value("test.arr_i32", [-5, 6, 7], V.ARRAY, sub_type=V.INT32)
    w.add_key_value("test.arr_u64", [1, 1 << 40], V.ARRAY, sub_type=V.UINT64)
    w.add_key_value("test.arr_i64", [-(1 << 40), 3], V.ARRAY, sub_type=V.INT64)
    w.add_key_value("test.arr_f32", [0.5, -1.25, 0.1], V.ARRAY, sub_type=V.FLOAT32)
    w.add_key_value("test.arr_f64", [0.1, -2.5], V.ARRAY, sub_type=V.FLOAT64)
    w.add_key_value("test.arr_bool", [True, False, True], V.ARRAY, sub_type=V.BOOL)
    w.add_key_value("test.arr_string", ["a", "", "\u00fc\u2713"], V.ARRAY, sub_type=V.STRING)
    w.add_key_value("test.nested_i32", [[1, 2, 3], [4]], V.ARRAY, sub_type=V.ARRAY)
    w.add_key_value("test.nested_string", [["x", "y"], ["z"]], V.ARRAY, sub_type=V.ARRAY)
    w.add_key_value("test.nested3", [[[1], [2, 3]], [[4]]], V.ARRAY, sub_type=V.ARRAY)


def write(path, tensors, meta=None, alignment=None):
    w = gguf.GGUFWriter(str(path), arch="kvrun-test")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    if meta:
        meta(w)
    for name, arr, raw in tensors:
        w.add_tensor(name, arr, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    # Expected values: gguf-py's own reader and dequantize over the written file.
    r = gguf.GGUFReader(str(path))
    out = []
    for t in r.tensors:
        out.append(np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype=np.float32).ravel())
    np.concatenate(out).astype("<f4").tofile(str(path).replace(".gguf", ".expected.f32"))


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rows, cols = 2, 256
    tensors = []
    f = special_floats(rows * cols).reshape(rows, cols)
    tensors.append(("plain.F32", f, None))
    h = finite_halves(rows * cols)
    h[:6] = [0x0000, 0x8000, 0x0001, 0x83FF, 0x7C00, 0x7E01]  # +-0, subnormals, inf, NaN
    tensors.append(("plain.F16", h.view(np.float16).reshape(rows, cols), None))
    bf = quantize(special_floats(rows * cols), T.BF16).view(np.uint16).copy()
    bf[8:10] = [0x7FC1, 0xFF80]  # a NaN with payload, -inf
    tensors.append(("plain.BF16", bf.view(np.uint8).reshape(rows, cols * 2), T.BF16))
    for qt in QUANTIZABLE:
        x = RNG.standard_normal((rows, cols)).astype(np.float32)
        tensors.append((f"quant.{qt.name}", quantize(x, qt), qt))
    for qt in BLOCK_TYPES:
        tensors.append((f"rand.{qt.name}", random_blocks(qt, rows, cols), qt))
    # A 3-D tensor: numpy shape [3, 2, 64] -> ne [64, 2, 3], 6 rows.
    q3 = quantize(RNG.standard_normal((3, 2, 64)).astype(np.float32), T.Q8_0)
    tensors.append(("shape3d.Q8_0", q3, T.Q8_0))
    tensors.append(("scalar1d.F32", np.array([1.5, -2.0, 3.25], dtype=np.float32), None))
    write(OUT / "types.gguf", tensors, meta=add_metadata)

    small = [
        ("a.F32", np.arange(5, dtype=np.float32), None),
        ("b.Q8_0", quantize(RNG.standard_normal((1, 32)).astype(np.float32), T.Q8_0), T.Q8_0),
        ("c.F16", np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float16), None),
    ]
    write(OUT / "align64.gguf", small, meta=lambda w: w.add_string("general.name", "align64"), alignment=64)
    data = bytearray((OUT / "align64.gguf").read_bytes())
    assert data[4:8] == struct.pack("<I", 3)
    data[4:8] = struct.pack("<I", 2)
    (OUT / "v2.gguf").write_bytes(bytes(data))
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {OUT} ({total} bytes)")


if __name__ == "__main__":
    sys.exit(main())
