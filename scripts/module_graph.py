#!/usr/bin/env python3
"""The module graph of src/, and any import cycle in it.

    python3 scripts/module_graph.py [src]

Level 1: for each top-level module (a file or folder directly under src/), the other top-level
modules it names through `crate::` paths. Level 2: inside each folder module, the graph of its
children through `super::child` and `crate::<top>::child` paths (a parent that re-exports its
children is not counted as depending on them). Test code (`#[cfg(test)] mod` blocks, tests.rs
files) and comments are left out. Exits 1 when either level has a cycle (strongly connected
components found with Tarjan's algorithm).
"""
import os, re, sys

ROOT = sys.argv[1] if len(sys.argv) > 1 else 'src'
TEST_MOD = re.compile(r'#\[cfg\((?:all\()?test[^\]]*\]\s*mod\s+\w+\s*\{')


def strip(text):
    """The text without test modules and comments."""
    out, i = [], 0
    while True:
        m = TEST_MOD.search(text, i)
        if not m:
            out.append(text[i:])
            break
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while depth and j < len(text):
            depth += {'{': 1, '}': -1}.get(text[j], 0)
            j += 1
        i = j
    return re.sub(r'//[^\n]*', '', ''.join(out))


def rust_files(path):
    if os.path.isdir(path):
        for d, _, fs in os.walk(path):
            for f in fs:
                if f.endswith('.rs') and f != 'tests.rs':
                    yield os.path.join(d, f)
    elif os.path.exists(path + '.rs'):
        yield path + '.rs'


def cycles(graph):
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def names(text, prefix):
    found = set(re.findall(prefix + r'(\w+)', text))
    for group in re.findall(prefix + r'\{([^}]*)\}', text):
        found |= set(re.findall(r'(?:^|,)\s*(\w+)', group))
    return found


def main():
    bad = False
    tops = sorted(m[:-3] if m.endswith('.rs') else m for m in os.listdir(ROOT) if m not in ('lib.rs', 'main.rs'))
    graph = {}
    for m in tops:
        deps = set()
        for f in rust_files(os.path.join(ROOT, m)):
            deps |= names(strip(open(f).read()), 'crate::')
        graph[m] = sorted(d for d in deps if d in tops and d != m)
    print('top level:')
    for m in tops:
        print(f'  {m:12} -> {", ".join(graph[m]) or "(nothing)"}')
    for c in cycles(graph):
        bad = True
        print('  CYCLE:', ' <-> '.join(c))
    for top in tops:
        folder = os.path.join(ROOT, top)
        if not os.path.isdir(folder):
            continue
        kids = sorted({k[:-3] if k.endswith('.rs') else k for k in os.listdir(folder)
                       if k not in ('mod.rs', 'tests.rs') and (k.endswith('.rs') or os.path.isdir(os.path.join(folder, k)))})
        sub = {}
        for k in kids:
            deps = set()
            for f in rust_files(os.path.join(folder, k)):
                text = strip(open(f).read())
                own = f == os.path.join(folder, k) + '.rs' or f == os.path.join(folder, k, 'mod.rs')
                deps |= names(text, r'\bsuper::' if own else r'\bsuper::super::')
                deps |= names(text, 'crate::' + top + '::')
            sub[k] = sorted(d for d in deps if d in kids and d != k)
        for c in cycles(sub):
            bad = True
            print(f'  CYCLE in {top}:', ' <-> '.join(c))
    print('cycles found' if bad else 'no cycle (top level, nor among the children of any folder module)')
    sys.exit(1 if bad else 0)


main()
