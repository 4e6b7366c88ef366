#!/usr/bin/env python3
"""List module circles in every crate of the workspace (standard library only, no venv).

A circle is a set of sibling modules that name each other through `crate::` / `super::` /
`self::` paths, directly or through other siblings: `encoder` uses `qwen` and `qwen` uses
`encoder`. A child naming its parent (or the parent naming its child) is the normal Rust tree and
is not counted. Each module is mapped to its file (`a.rs`, `a/mod.rs`, or `a.rs` with an `a/`
folder); a path is resolved to the longest module prefix that exists. Items re-exported at the
crate root (`crate::Thing`) are resolved to the module that defines them when `lib.rs` says
`pub use module::Thing`, so a root re-export does not hide a circle.

Usage: python3 tools/module_cycles.py [WORKSPACE_ROOT]
Prints one line per crate, then each circle found; exits 1 when any circle exists.
"""

import re
import sys
from pathlib import Path

PATH_RE = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
USE_GROUP_RE = re.compile(r"\buse\s+(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^;]*)\}\s*;", re.S)
ROOT_REEXPORT_RE = re.compile(r"pub\s+use\s+([a-z_][a-z0-9_]*)::(?:\{([^;]*)\}|([A-Za-z_][A-Za-z0-9_]*))\s*;", re.S)


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def crate_root(src):
    """The crate's root file: lib.rs, or main.rs for a binary-only crate."""
    return src / "lib.rs" if (src / "lib.rs").exists() else src / "main.rs"


def module_files(src):
    """Map module path tuples to their source files (the crate root is ())."""
    mods = {(): crate_root(src)}
    for f in src.rglob("*.rs"):
        rel = f.relative_to(src)
        if rel in (Path("lib.rs"), Path("main.rs")) or rel.parts[0] == "bin":
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "mod":
            parts = parts[:-1]
        mods[tuple(parts)] = f
    return mods


def resolve(mods, base, segments):
    """Longest existing module prefix of base + segments."""
    path = list(base)
    best = tuple(path)
    for seg in segments:
        if seg == "super":
            path = path[:-1]
            best = tuple(path)
            continue
        path.append(seg)
        if tuple(path) in mods:
            best = tuple(path)
        else:
            break
    return best


def references(mods, module, text, root_items):
    refs = set()

    def add(kind, tail_segments):
        if kind == "crate":
            base = ()
        elif kind == "super":
            base = module[:-1]
        else:
            base = module
        segs = [s for s in tail_segments if s]
        if kind == "crate" and len(segs) == 1 and segs[0] in root_items:
            refs.add(root_items[segs[0]])
            return
        target = resolve(mods, base, segs)
        # `super::super::x` arrives here as leading "super" segments handled in resolve.
        refs.add(target)

    for m in USE_GROUP_RE.finditer(text):
        kind, prefix, group = m.group(1), m.group(2), m.group(3)
        head = prefix.split("::")[1:]
        for item in re.split(r"[,{}\s]+", group):
            item = item.split(" as ")[0]
            if not item or item == "self":
                add(kind, head)
            else:
                add(kind, head + item.split("::"))
    for m in PATH_RE.finditer(text):
        kind, tail = m.group(1), m.group(2)
        add(kind, tail.split("::")[1:])
    refs.discard(module)
    return refs


def sibling_edges(edges):
    """Map module → module edges onto edges between siblings under their common parent."""
    out = {}
    for a, targets in edges.items():
        for b in targets:
            n = 0
            while n < min(len(a), len(b)) and a[n] == b[n]:
                n += 1
            if n == len(a) or n == len(b):
                continue  # one is an ancestor of the other
            parent = a[:n]
            out.setdefault(parent, {}).setdefault(a[: n + 1], set()).add(b[: n + 1])
    return out


def cycles(graph):
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, result = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                result.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return result


def root_reexports(lib_text):
    items = {}
    for m in ROOT_REEXPORT_RE.finditer(lib_text):
        module = m.group(1)
        names = m.group(2) if m.group(2) is not None else m.group(3)
        for name in re.split(r"[,{}\s]+", names):
            name = name.split(" as ")[-1].strip()
            if name and name != "self":
                items[name] = (module,)
    return items


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)
    found = 0
    for src in sorted(root.glob("crates/*/src")):
        if not crate_root(src).exists():
            continue
        mods = module_files(src)
        root_items = root_reexports(strip_comments(crate_root(src).read_text()))
        root_items = {k: v for k, v in root_items.items() if v in mods}
        edges = {}
        for module, f in mods.items():
            edges[module] = references(mods, module, strip_comments(f.read_text()), root_items)
        circles = []
        for parent, graph in sibling_edges(edges).items():
            circles.extend(cycles(graph))
        name = src.parent.name
        print(f"{name}: {len(mods)} modules, {len(circles)} circle(s)")
        for c in circles:
            print("  circle: " + " <-> ".join("::".join(m) for m in c))
        found += len(circles)
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
