"""Differential delta cases made by the real deepdiff, as a client makes them.

Run it with the interpreter of a venv holding the deepdiff under test:
    python delta_cases.py OUT_DIR COUNT SEED [blender]
For each case it writes <id>.base.pkl (the node data the server holds),
<id>.delta.pkl (delta.dumps() as the client sends it) and either
<id>.result.pkl (pickle of base + Delta(delta), as Python computes it) or
<id>.abort (Python raised while patching). It prints a JSON summary.

A case is produced the way a Multi-User client commits: the client diffs
its last version against the new one with DeepDiff (Scene and Collection
nodes with ignore_order and report_repetition), patches its own copy first
(a delta that fails there never reaches the server) and sends dumps().
"""
import copy
import json
import logging
import math
import os
import pickle
import random
import struct
import sys
import uuid

import deepdiff
from deepdiff import DeepDiff, Delta

logging.disable(logging.CRITICAL)

NAMES = ["Cube", "Sphere", "Camera", "Light", "Suzanne", "Nœud", "it's", 'say "hi"', "both ' and \"",
         "back\\slash", "tab\there", "new\nline", "日本", "a.b", "x[0]", "__dunder", "", " ", "1", "None"]
MODIFIER_TYPES = ["SUBSURF", "MIRROR", "ARRAY", "BEVEL", "SOLIDIFY"]


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def vec(rng, n, scale=10.0):
    return [f32(rng.uniform(-scale, scale)) for _ in range(n)]


def uid(rng):
    return str(uuid.UUID(int=rng.getrandbits(128)))


def floats_blob(rng, n):
    return struct.pack("<%df" % n, *[rng.uniform(-5, 5) for _ in range(n)])


def blender_object(rng):
    return {
        "hide_render": False,
        "location": vec(rng, 3),
        "matrix_parent_inverse": [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
        "name": rng.choice(NAMES),
        "rotation_euler": vec(rng, 3, 3.14),
        "scale": [1.0, 1.0, 1.0],
        "lock_location": [False, False, False],
        "modifiers": {},
        "vertex_groups": {i: {"name": "Group%d" % i, "vertices": [(j, f32(rng.random())) for j in range(rng.randrange(4))]}
                          for i in range(rng.randrange(3))},
        "parent_uid": (uid(rng), rng.choice(NAMES)) if rng.random() < 0.5 else None,
        "material_slots": [(uid(rng), "Material")],
        "type_id": "Object",
        "uuid": uid(rng),
        "data_uuid": uid(rng),
    }


def blender_mesh(rng):
    n = rng.randrange(1, 24)
    return {
        "name": rng.choice(NAMES),
        "vertex_count": n,
        "vertices": {"co": floats_blob(rng, 3 * n)} if n else {},
        "edges": {"vertices": struct.pack("<%di" % (2 * n), *range(2 * n))},
        "attributes": [("position", "FLOAT_VECTOR", "POINT", {"value": floats_blob(rng, 3 * n)})],
        "materials": [(uid(rng), "Material")],
        "uv_layers": {"UVMap": {"data_uv": floats_blob(rng, 2 * n)}},
        "use_auto_smooth": False,
        "type_id": "Mesh",
    }


def blender_action(rng):
    return {
        "name": "CubeAction",
        "fcurves": [{"data_path": "location", "index": i, "keyframe_points": [
            {"co": [float(f), f32(rng.uniform(-5, 5))], "interpolation": "BEZIER", "handle_left": vec(rng, 2)}
            for f in range(1, rng.randrange(2, 6) * 10, 10)]} for i in range(3)],
        "frame_range": [1.0, 60.0],
        "type_id": "Action",
    }


def blender_collection(rng):
    return {
        "name": "Collection",
        "objects": [uid(rng) for _ in range(rng.randrange(6))],
        "children": [uid(rng) for _ in range(rng.randrange(3))],
        "hide_viewport": False,
        "type_id": "Collection",
    }


def blender_scene(rng):
    return {
        "name": "Scene",
        "frame_start": 1,
        "frame_end": 250,
        "collection": {"objects": [uid(rng) for _ in range(rng.randrange(4))], "children": []},
        "timeline_markers": [("F_%02d" % i, i * 10, None) for i in range(rng.randrange(3))],
        "render": {"engine": "BLENDER_EEVEE", "fps": 24, "resolution_x": 1920},
        "view_settings": {"exposure": 0.0, "gamma": 1.0, "look": "None"},
        "type_id": "Scene",
    }


def blender_material(rng):
    return {
        "name": "Material",
        "diffuse_color": vec(rng, 4, 1.0),
        "node_tree": {"nodes": {"Principled BSDF": {"inputs": {i: {"default_value": f32(rng.random())} for i in range(4)},
                                                    "location": vec(rng, 2, 500)}},
                      "links": [{"from_node": "Principled BSDF", "to_node": "Material Output", "from_socket": 0}]},
        "use_nodes": True,
        "type_id": "Material",
    }


BLENDER = [blender_object, blender_mesh, blender_action, blender_collection, blender_scene, blender_material]


def scalar(rng):
    k = rng.randrange(10)
    if k == 0:
        return rng.choice([0, 1, -1, 7, 255, 65536, 2 ** 31, -(2 ** 40), 2 ** 70])
    if k == 1:
        return f32(rng.uniform(-100, 100))
    if k == 2:
        return rng.choice([0.5, 1.0, 1e16, -0.0, 2.5e-7])
    if k == 3:
        return rng.choice(NAMES)
    if k == 4:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(6)))
    if k == 5:
        return rng.choice([True, False, None])
    if k == 6:
        return rng.choice(["5", " 7 ", "1_000", "2.5", "abc", "True", "[1]"])
    if k == 7:
        return b"5"
    return "s%d" % rng.randrange(100)


def key(rng, exotic):
    r = rng.random()
    if r < 0.6:
        return rng.choice(NAMES[:6] + ["k%d" % rng.randrange(8), "location", "name"])
    if r < 0.8 or not exotic:
        return rng.randrange(6)
    return rng.choice(NAMES)


def random_value(rng, depth=0, exotic=False):
    if depth > 3 or rng.random() < 0.35:
        return scalar(rng)
    k = rng.randrange(4)
    n = rng.randrange(5)
    if k == 0:
        return [random_value(rng, depth + 1, exotic) for _ in range(n)]
    if k == 1:
        return tuple(random_value(rng, depth + 1, exotic) for _ in range(n))
    if k == 2:
        return [scalar(rng) for _ in range(n + 2)]
    return {key(rng, exotic): random_value(rng, depth + 1, exotic) for _ in range(n)}


def containers(v, path=()):
    """Every (path, container) inside v."""
    out = [(path, v)]
    if isinstance(v, dict):
        for k, x in v.items():
            if isinstance(x, (dict, list, tuple)):
                out.extend(containers(x, path + (k,)))
    elif isinstance(v, (list, tuple)):
        for i, x in enumerate(v):
            if isinstance(x, (dict, list, tuple)):
                out.extend(containers(x, path + (i,)))
    return out


def replace_at(root, path, new):
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(root, tuple):
        items = list(root)
        items[head] = replace_at(items[head], rest, new)
        return tuple(items)
    root[head] = replace_at(root[head], rest, new)
    return root


def random_edit(rng, data, exotic):
    """One random change somewhere in the tree."""
    path, target = rng.choice(containers(data))
    kind = rng.randrange(9)
    if isinstance(target, dict):
        if target and kind < 3:
            k = rng.choice(list(target))
            target[k] = random_value(rng, 2, exotic) if kind else scalar(rng)
        elif target and kind < 5:
            del target[rng.choice(list(target))]
        elif kind < 7:
            target[key(rng, exotic)] = random_value(rng, 2, exotic)
        else:
            for k in list(target)[:2]:
                v = target[k]
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    target[k] = rng.choice([str(v), float(v), int(v) if math.isfinite(v) else 0, bool(v)])
                elif isinstance(v, str):
                    target[k] = rng.choice([7, v + "!", v.encode("utf-8"), None])
                elif isinstance(v, list):
                    target[k] = tuple(v)
                elif isinstance(v, tuple):
                    target[k] = list(v)
        return data
    items = list(target)
    if items and kind < 3:
        items[rng.randrange(len(items))] = random_value(rng, 2, exotic)
    elif items and kind < 5:
        del items[rng.randrange(len(items))]
    elif kind < 7:
        items.insert(rng.randrange(len(items) + 1), scalar(rng))
    elif items:
        rng.shuffle(items)
        if rng.random() < 0.5:
            # A copy: the server keeps no container aliasing (see README).
            items.append(copy.deepcopy(items[0]))
    new = tuple(items) if isinstance(target, tuple) else items
    return replace_at(data, path, new)


def blender_edit(rng, data):
    """A named edit an artist makes."""
    t = data.get("type_id")
    choice = rng.randrange(6)
    if t == "Object":
        if choice == 0:
            data["location"] = vec(rng, 3)
        elif choice == 1:
            data["rotation_euler"][rng.randrange(3)] = f32(rng.uniform(-3, 3))
        elif choice == 2:
            data["name"] = rng.choice(NAMES)
        elif choice == 3:
            name = rng.choice(MODIFIER_TYPES).title()
            data["modifiers"][name] = {"type": name.upper(), "levels": rng.randrange(4), "show_viewport": True}
        elif choice == 4 and data["modifiers"]:
            del data["modifiers"][rng.choice(list(data["modifiers"]))]
        else:
            data["vertex_groups"][len(data["vertex_groups"])] = {"name": "G", "vertices": [(0, 1.0)]}
    elif t == "Mesh":
        n = rng.randrange(1, 30)
        data["vertex_count"] = n
        data["vertices"] = {"co": floats_blob(rng, 3 * n)} if choice else {}
        if choice == 2:
            data["attributes"].append(("col", "FLOAT_COLOR", "CORNER", {"value": floats_blob(rng, 4)}))
        if choice == 3:
            data["vertices"] = {"co": floats_blob(rng, 17000)}  # over 64 KiB
    elif t == "Action":
        curve = rng.choice(data["fcurves"])
        if choice < 3:
            curve["keyframe_points"].append({"co": [float(rng.randrange(100, 200)), 1.0], "interpolation": "LINEAR",
                                             "handle_left": [0.0, 0.0]})
        elif curve["keyframe_points"]:
            curve["keyframe_points"][0]["co"][1] = f32(rng.uniform(-9, 9))
    elif t in ("Collection", "Scene"):
        objs = data["objects"] if t == "Collection" else data["collection"]["objects"]
        if choice < 2 or not objs:
            objs.insert(rng.randrange(len(objs) + 1), uid(rng))
        elif choice < 4:
            objs.pop(rng.randrange(len(objs)))
        else:
            rng.shuffle(objs)
            objs.append(objs[0])  # a str: repetition without aliasing
        if t == "Scene" and choice == 5:
            data["timeline_markers"].append(("M", rng.randrange(300), None))
    elif t == "Material":
        data["diffuse_color"] = vec(rng, 4, 1.0)
        if choice == 1:
            data["node_tree"]["links"].append({"from_node": "X", "to_node": "Y", "from_socket": 1})
    return data


def diff_kwargs(data):
    if isinstance(data, dict) and data.get("type_id") in ("Scene", "Collection"):
        return {"ignore_order": True, "report_repetition": True}
    return {}


def main():
    out, count, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    blender_only = len(sys.argv) > 4 and sys.argv[4] == "blender"
    os.makedirs(out, exist_ok=True)
    rng = random.Random(seed)
    written = aborted = skipped = 0
    n = 0
    while written < count:
        mode = 0 if blender_only else rng.randrange(3)
        exotic = rng.random() < 0.3
        if mode == 0:
            base = rng.choice(BLENDER)(rng)
        else:
            base = {key(rng, exotic): random_value(rng, 1, exotic) for _ in range(rng.randrange(1, 6))}
        for _ in range(rng.randrange(1, 5)):  # a chain of successive edits
            new = copy.deepcopy(base)
            try:
                named = mode == 0 and (blender_only or rng.random() < 0.8)
                new = blender_edit(rng, new) if named else random_edit(rng, new, exotic)
            except (IndexError, KeyError, TypeError, AttributeError, ValueError):
                skipped += 1
                continue
            # Now and then the server's copy has diverged from the client's
            # (a stale or hostile client): the delta then lands on data it
            # was not made from, which is where patches skip edits or abort.
            diverged = not blender_only and rng.random() < 0.25
            try:
                delta = Delta(DeepDiff(base, new, cache_size=5000, **diff_kwargs(base)))
                raw = delta.dumps()
            except Exception:
                skipped += 1
                continue
            if not delta.diff:
                continue
            try:
                client = base + delta  # the client patches itself first
            except Exception:
                if not diverged:
                    skipped += 1
                    continue
                client = base
            server = base
            if diverged:
                try:
                    server = random_edit(rng, copy.deepcopy(base), exotic)
                except (IndexError, KeyError, TypeError, AttributeError, ValueError):
                    server = base
            case = os.path.join(out, "c%06d" % n)
            n += 1
            base_raw = pickle.dumps(server, protocol=4)
            with open(case + ".base.pkl", "wb") as f:
                f.write(base_raw)
            with open(case + ".delta.pkl", "wb") as f:
                f.write(raw)
            try:
                result = pickle.loads(base_raw) + Delta(raw)
            except Exception as e:
                with open(case + ".abort", "w") as f:
                    f.write(repr(e))
                aborted += 1
            else:
                with open(case + ".result.pkl", "wb") as f:
                    f.write(pickle.dumps(result, protocol=4))
            written += 1
            base = client
            if written >= count:
                break
    print(json.dumps({"deepdiff": deepdiff.__version__, "written": written, "aborted": aborted, "skipped": skipped}))


if __name__ == "__main__":
    main()
