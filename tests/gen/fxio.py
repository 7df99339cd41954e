"""Writer for the tiny named-array container used by tests/fixtures/formats/*.bin.

Layout (all little-endian), repeated until end of file:
    u32 name_len, name bytes (ASCII, no NUL),
    u32 dtype code (0=u8, 1=i32, 2=u16 raw bits (bf16/f16), 3=f32, 4=u32),
    u32 ndim, u64 dims[ndim], u64 nbytes, nbytes of data (C order).
The C reader lives in tests/test_formats_ref.c.
"""
import struct

import numpy as np

CODES = {np.dtype(np.uint8): 0, np.dtype(np.int32): 1, np.dtype(np.uint16): 2,
         np.dtype(np.float32): 3, np.dtype(np.uint32): 4}


class FixtureWriter:
    def __init__(self):
        self.records = []

    def add(self, name, arr):
        arr = np.ascontiguousarray(arr)
        if arr.dtype not in CODES:
            raise TypeError(f"{name}: unsupported dtype {arr.dtype}")
        self.records.append((name, arr))

    def save(self, path):
        with open(path, "wb") as f:
            for name, arr in self.records:
                nb = name.encode("ascii")
                f.write(struct.pack("<I", len(nb)))
                f.write(nb)
                f.write(struct.pack("<II", CODES[arr.dtype], arr.ndim))
                for d in arr.shape:
                    f.write(struct.pack("<Q", d))
                data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
                f.write(struct.pack("<Q", len(data)))
                f.write(data)


def load(path):
    """Reads a fixture file back into {name: numpy array}."""
    dtypes = {0: np.uint8, 1: np.int32, 2: np.uint16, 3: np.float32, 4: np.uint32}
    out = {}
    with open(path, "rb") as f:
        b = f.read()
    o = 0
    while o < len(b):
        (n,) = struct.unpack_from("<I", b, o)
        o += 4
        name = b[o:o + n].decode("ascii")
        o += n
        code, nd = struct.unpack_from("<II", b, o)
        o += 8
        dims = struct.unpack_from("<%dQ" % nd, b, o)
        o += 8 * nd
        (nb,) = struct.unpack_from("<Q", b, o)
        o += 8
        out[name] = np.frombuffer(b[o:o + nb], dtype=dtypes[code]).reshape(dims)
        o += nb
    return out
