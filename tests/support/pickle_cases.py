"""Writes pickle test cases made by CPython for the codec tests.

For each case: <n>.pkl (pickle.dumps(value, protocol=4)), <n>.typed (a
canonical typed rendering of the value) and <n>.exact (1 when a decoder
without container identity must reproduce the bytes exactly).
Usage: pickle_cases.py OUT_DIR COUNT SEED
"""
import math
import os
import pickle
import random
import struct
import sys


def typed(v):
    if v is None:
        return "N"
    if v is True:
        return "T"
    if v is False:
        return "F"
    if isinstance(v, int):
        if -(2**63) <= v < 2**63:
            return f"i{v}"
        n = (v.bit_length() + 8) // 8
        raw = v.to_bytes(n, "little", signed=True)
        while len(raw) > 1 and ((raw[-1] == 0 and raw[-2] < 0x80) or (raw[-1] == 0xFF and raw[-2] >= 0x80)):
            raw = raw[:-1]
        return "I" + raw.hex()
    if isinstance(v, float):
        return "f" + struct.pack(">d", v).hex()
    if isinstance(v, str):
        return "s" + v.encode("utf-8").hex()
    if isinstance(v, bytes):
        return "b" + v.hex()
    if isinstance(v, list):
        return "[" + ",".join(typed(x) for x in v) + "]"
    if isinstance(v, tuple):
        return "(" + ",".join(typed(x) for x in v) + ")"
    if isinstance(v, dict):
        return "{" + ",".join(typed(k) + ":" + typed(x) for k, x in v.items()) + "}"
    raise TypeError(type(v))


INTS = [0, 1, 255, 256, 65535, 65536, -1, -128, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1,
        2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 10**40, -(10**40), 2**2100]
FLOATS = [0.0, -0.0, 1.5, -2.25, 1e16, 1e-300, math.inf, -math.inf, float("nan"), 3.4028234663852886e38]
STRS = ["", "a", "é", "ÿ", "Ā", "name", "location", "with 'quote'", 'dbl "q"', "日本語", "😀 emoji", "x" * 300]
KEYS = ["location", "rotation_euler", "scale", "name", "type_id", "uuid", "modifiers", "data"]


def atom(rng):
    k = rng.randrange(7)
    if k == 0:
        return rng.choice(INTS + [rng.randrange(-(2**40), 2**40)])
    if k == 1:
        return rng.choice(FLOATS + [rng.uniform(-1e6, 1e6)])
    if k == 2:
        return rng.choice(STRS + ["s%d" % rng.randrange(1000)])
    if k == 3:
        return bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 2, 16, 300])))
    if k == 4:
        return rng.choice([True, False, None])
    if k == 5:
        return struct.unpack("<f", struct.pack("<f", rng.uniform(-10, 10)))[0]
    return rng.choice(KEYS)


def value(rng, depth):
    if depth > 4 or rng.random() < 0.3:
        return atom(rng)
    k = rng.randrange(4)
    n = rng.choice([0, 1, 2, 3, 4, 7])
    if k == 0:
        return [value(rng, depth + 1) for _ in range(n)]
    if k == 1:
        return tuple(value(rng, depth + 1) for _ in range(n))
    if k == 2:
        return {rng.choice(KEYS + [rng.randrange(10), "k%d" % i]): value(rng, depth + 1) for i in range(n)}
    return {"type_id": "Object", "name": "Cube", "location": [1.0, 2.0, 3.0],
            "matrix": [[1.0, 0.0, 0.0, 0.0] for _ in range(4)], "vertices": [(i, 0.5) for i in range(3)],
            "parent_uid": tuple(["abc", "Cube"]), "blob": b"\x00" * 12}


def special_cases():
    shared = "shared key " * 2
    yield [shared, shared, {shared: shared}], True
    yield list(range(1000)), True
    yield list(range(1001)), True
    yield list(range(2500)), True
    yield {i: i for i in range(1000)}, True
    yield {i: str(i) for i in range(2000)}, True
    yield {"a": 1}, True
    yield [b"x" * 70000, "y" * 70000, "tail"], True
    yield [b"x" * 65536, "z"], True
    yield [[i, float(i)] for i in range(20000)], True
    yield {"k%d" % i: [float(i)] * 4 for i in range(3000)}, True
    yield tuple(range(5)), True
    # Built at run time: literal tuples are shared constants, and sharing
    # containers is what the byte-exact check leaves out.
    yield (tuple(), tuple([1]), tuple([1, 2]), tuple([1, 2, 3]), (tuple([1]),)), True
    yield {1: "int key", 1.5: "float key", None: "none", True: "bool", (1, 2): "tuple key"}, True
    inner = [1, 2]
    yield [inner, inner], False  # container aliasing: value-exact only
    yield [INTS, FLOATS, STRS], True
    yield ["%d" % i for i in range(300)], True


def main():
    out, count, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    os.makedirs(out, exist_ok=True)
    rng = random.Random(seed)
    cases = list(special_cases()) + [(value(rng, 0), True) for _ in range(count)]
    for n, (v, exact) in enumerate(cases):
        with open(os.path.join(out, f"{n}.pkl"), "wb") as f:
            f.write(pickle.dumps(v, protocol=4))
        with open(os.path.join(out, f"{n}.typed"), "w") as f:
            f.write(typed(v))
        with open(os.path.join(out, f"{n}.exact"), "w") as f:
            f.write("1" if exact else "0")
    print(len(cases))


if __name__ == "__main__":
    main()
