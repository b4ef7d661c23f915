"""The repo's modules import each other one way only (model_config.py's docstring draws the graph):
each imports first, the ones that used to form a circle import in every order of two, and no
function imports a module of the repo (the way an import circle is dodged)."""
import ast
import itertools
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ('models', 'weights', 'data_manager')
TOP_LEVEL = sorted([name[:-3] for name in os.listdir(ROOT) if name.endswith('.py')] + list(PACKAGES))
# The modules of the old circles: checkpoints -> options -> models -> checkpoints (closed by an import
# inside models.from_checkpoint), models.teacher -> checkpoints, weights -> models.base -> weights.
FORMER_CIRCLE = ('checkpoints', 'options', 'models', 'models.teacher', 'weights', 'model_config')


def _sources():
    """Paths of the repo's own Python files (the tests aside)."""
    paths = [os.path.join(ROOT, name) for name in os.listdir(ROOT) if name.endswith('.py')]
    for package in PACKAGES + ('benchmarks',):
        folder = os.path.join(ROOT, package)
        paths += [os.path.join(folder, name) for name in sorted(os.listdir(folder)) if name.endswith('.py')]
    return sorted(paths)


# One interpreter imports each module as if first, in a clean slate of the repo's modules: the
# third-party ones (torch, timm: seconds to load on a shared machine) stay loaded, the repo's are
# dropped from sys.modules before each start, which is all an import circle of the repo depends on.
_IMPORT_IN_ORDERS = """
import importlib, json, sys, traceback
import numpy, PIL, scipy, sklearn, timm, torch, torchvision
own, orders, failures = set(sys.argv[1].split(',')), json.loads(sys.argv[2]), []
for order in orders:
    for name in [n for n in sys.modules if n.split('.')[0] in own]:
        del sys.modules[name]
    try:
        for name in order:
            importlib.import_module(name)
    except Exception:
        failures.append(' -> '.join(order) + ': ' + traceback.format_exc().strip().splitlines()[-1])
print(json.dumps(failures))
"""


def _failed_orders(orders):
    result = subprocess.run([sys.executable, '-c', _IMPORT_IN_ORDERS, ','.join(TOP_LEVEL), json.dumps(orders)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_each_module_imports_first_and_the_former_circle_in_every_order_of_two():
    """Every module of the repo (the scripts, the packages) imported first must not trip over a
    half-initialised one; nor must each ordered pair of the modules that used to import each other
    in a circle (the orders that failed, or worked only through an import inside a function).
    One interpreter for all: loading torch takes seconds."""
    orders = [[name] for name in TOP_LEVEL] + [list(pair) for pair in itertools.permutations(FORMER_CIRCLE, 2)]
    assert _failed_orders(orders) == []


@pytest.mark.parametrize('path', _sources(), ids=lambda p: os.path.relpath(p, ROOT))
def test_no_function_imports_a_module_of_the_repo(path):
    """Functions may import optional third-party packages (faiss, h5py, onnxruntime), never a
    module of this repo: that is how an import circle is hidden, not removed."""
    own = set(TOP_LEVEL)
    tree = ast.parse(open(path).read(), path)
    found = []
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = ['.' if node.level else node.module]
            else:
                continue
            found += [f'{function.name} (line {node.lineno}) imports {name}' for name in names
                      if name == '.' or name.split('.')[0] in own]
    assert not found, found
