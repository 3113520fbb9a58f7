#!/usr/bin/env python3
"""Fails when the library's modules import each other in a cycle.

Each source file under crates/core/src is a node. A file depends on the module that every
`crate::…`, `super::…`, `self::…` or `child::…` path it names resolves to (the longest prefix of the path
that is a module file), in `use` lines and in code alike; `mod x;` declarations are not
dependencies, and neither is a module naming its own ancestors (`super::Store` in a store
implementation: a parent module is the public face its children are written against). A cycle
(a → b → … → a) means two modules cannot be understood or changed one without the other,
which is what issue 9 set out to remove.

It also holds the layers of issue 22: a command (`commands::x`, with its submodules) never
imports another command (what two commands share lives in the repository layer), and nothing
below the commands (`repository`, `host`, `store`, ...) imports one. The one exception is
`COMPOSES`: `drill` runs `restore` as a whole.

Usage: scripts/check-module-cycles.py [SRC_DIR]   (prints the module map with -v)
"""
import re
import sys
from pathlib import Path

PATH = re.compile(r"(?<!::)\b(crate|super|self|[a-z_][a-z0-9_]*)((?:::[A-Za-z_][A-Za-z0-9_]*)*)(::\{)?")


def module_of(src: Path, file: Path) -> tuple[str, ...]:
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib"):
        parts.pop()
    return tuple(parts)


def brace_group(text: str, start: int) -> str:
    """The text inside the braces opening at `start` (nested braces kept)."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
    return ""


def split_top(group: str) -> list[str]:
    items, depth, current = [], 0, ""
    for ch in group:
        if ch == "," and depth == 0:
            items.append(current.strip())
            current = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        current += ch
    if current.strip():
        items.append(current.strip())
    return items


def referenced_paths(text: str) -> list[list[str]]:
    """Every module path a file names, with `a::{b, c::d}` groups expanded."""
    paths = []
    for match in PATH.finditer(text):
        if match.group(1) not in ("crate", "super", "self") and not match.group(2) and not match.group(3):
            continue
        head = [match.group(1)] + [p for p in match.group(2).split("::") if p]
        if match.group(3):
            group = brace_group(text, match.end() - 1)
            for item in split_top(group):
                inner = [p for p in re.split(r"::|\{|\}", item) if p.strip()]
                name = inner[0].split(" as ")[0].strip() if inner else ""
                if name and name != "self" and re.fullmatch(r"[A-Za-z_]\w*", name):
                    paths.append(head + [name])
                else:
                    paths.append(head)
        else:
            paths.append(head)
    return paths


def resolve(path: list[str], here: tuple[str, ...], modules: set) -> tuple:
    # `self` is the current module; `super` its parent (for a.rs and a/mod.rs alike).
    if path[0] == "crate":
        current, rest = [], path[1:]
    elif path[0] not in ("self", "super"):
        # A path starting with a child module's name (`use plan::Plan;` in a mod.rs).
        if tuple(list(here) + [path[0]]) not in modules:
            return here
        current, rest = list(here), path
    else:
        current, rest = list(here), path[1:]
        if path[0] == "super":
            current = current[:-1]
        while rest and rest[0] == "super":
            current, rest = current[:-1], rest[1:]
    best = tuple(current)
    for segment in rest:
        candidate = tuple(list(best) + [segment])
        if candidate in modules:
            best = candidate
        else:
            break
    return best


def main() -> int:
    args = [a for a in sys.argv[1:] if a != "-v"]
    verbose = "-v" in sys.argv
    src = Path(args[0]) if args else Path(__file__).resolve().parent.parent / "crates/core/src"
    files = {module_of(src, f): f for f in src.rglob("*.rs")}
    modules = set(files)
    graph: dict[tuple, set] = {m: set() for m in modules}
    for module, file in files.items():
        text = file.read_text()
        # Unit tests may reach anywhere; the module map is about the code itself.
        text = re.split(r"#\[cfg\(test\)\]\s*mod tests", text)[0]
        text = re.sub(r"//[^\n]*", "", text)
        for path in referenced_paths(text):
            target = resolve(path, module, modules)
            is_ancestor = module[: len(target)] == target
            if target in modules and not is_ancestor:
                graph[module].add(target)
    if verbose:
        for module in sorted(graph):
            deps = ", ".join("::".join(d) for d in sorted(graph[module]))
            print(f"{'::'.join(module) or 'crate'} -> {deps}")
    cycles = find_cycles(graph)
    for cycle in cycles:
        print("cycle: " + " -> ".join("::".join(m) for m in cycle), file=sys.stderr)
    crossings = layer_violations(graph)
    for crossing in crossings:
        print(crossing, file=sys.stderr)
    if cycles or crossings:
        return 1
    print(f"no import cycle among {len(modules)} modules of {src}, and the layers hold")
    return 0


# The one composition allowed: a drill is a whole restore (into a scratch folder) followed by a
# boot, so it runs the restore command as it is; restore knows nothing of drills.
COMPOSES = {("commands", "drill"): {("commands", "restore")}}


def layer_violations(graph: dict) -> list[str]:
    """Imports that cross the layers: command to command, or anything else to a command."""
    def command_of(module):
        if len(module) >= 2 and module[0] == "commands":
            return module[:2]
        return None

    found = []
    for module, deps in sorted(graph.items()):
        for dep in sorted(deps):
            target = command_of(dep)
            if target is None or command_of(module) == target:
                continue
            if target in COMPOSES.get(command_of(module), set()):
                continue
            who = "the command " + "::".join(command_of(module)) if command_of(module) else "::".join(module) or "crate"
            found.append(f"layer: {who} imports the command {'::'.join(target)} ({'::'.join(module)} -> {'::'.join(dep)})")
    return found


def find_cycles(graph: dict) -> list[list]:
    """One cycle per strongly connected component larger than one module (Tarjan)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component) + [sorted(component)[0]])

    sys.setrecursionlimit(10000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


if __name__ == "__main__":
    sys.exit(main())
