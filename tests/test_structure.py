"""The package's shape: no import cycles (imports inside functions included), no
private Keras API outside ``_keras_compat``, nothing pointing outside the
repository. Pure static checks (ast), fast, on every backend."""

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "keras_lowrank"


#: modules kept for one release under a former name: importing them warns (their test:
#: test_deprecated_modules_warn_and_give_the_same_objects)
DEPRECATED_MODULES = {"keras_lowrank.robustness.evaluation": "keras_lowrank.robustness.perturbed_model"}


def test_deprecated_modules_warn_and_give_the_same_objects():
    import importlib
    import sys

    import pytest

    from keras_lowrank import LowRankWarning

    for old, new in DEPRECATED_MODULES.items():
        sys.modules.pop(old, None)
        with pytest.warns(LowRankWarning, match=new.replace(".", r"\.")):
            module = importlib.import_module(old)
        current = importlib.import_module(new)
        assert module.__all__ and all(getattr(module, n) is getattr(current, n) for n in module.__all__)


def _modules():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def import_graph():
    """module → the package modules it imports, anywhere in its body.
    ``from pkg import sub`` imports the module ``pkg.sub`` (not ``pkg`` itself)."""
    modules = _modules()
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    graph[name].add(target if target in modules else base)
            elif isinstance(node, ast.Import):
                graph[name].update(alias.name for alias in node.names)
        graph[name] = {t for t in graph[name] if t in modules and t != name}
    return graph


def find_cycle(graph):
    """One import cycle as a list of modules, or None (depth-first search)."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target, path + [target])
                if found:
                    return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    graph = import_graph()
    assert "keras_lowrank._low_rank.factorization" in graph["keras_lowrank.optimizers"]
    # a package's __init__ re-exporting its modules is not a cycle with them
    cycle = find_cycle({name: {t for t in targets if not name.startswith(t + ".")}
                        for name, targets in graph.items()})
    assert cycle is None, " → ".join(cycle)


def test_the_library_does_not_import_the_experiments():
    """keras_lowrank_experiments (the CIFAR examples' networks and data) may use the
    library, never the other way round — the CLI's demo included (it lives in the
    library's private ``_demo``); and no public module is a demo."""
    offenders = [f"{path.relative_to(ROOT)}:{number}"
                 for path in PACKAGE.rglob("*.py")
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if "keras_lowrank_experiments" in line]
    assert not offenders, offenders
    assert not any(("demo" in name or name.endswith(".models")) and not name.startswith("keras_lowrank._demo")
                   for name in _modules())


def test_examples_use_only_the_public_api():
    """The examples are what users copy: no private module (``keras_lowrank._demo`` and
    the like) — they define their own small models."""
    offenders = [f"{path.relative_to(ROOT)}:{number}"
                 for path in (ROOT / "examples").rglob("*.py")
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(r"keras_lowrank(\.\w+)*\._(?!_)|from keras_lowrank(\.\w+)* import _", line)]
    assert not offenders, offenders


def test_private_keras_api_only_in_the_compat_module():
    pattern = re.compile(r"keras\.src|\._flatten_layers|_build_shapes_dict|_is_graph_network"
                         r"|object\.__setattr__|object\.__delattr__|\._variables\b|\._trainable_variables\b"
                         r"|\._layers\b|\._tracker\b|\._nodes\b|\._keras_history\b|_seed_generators\b")
    offenders = [f"{path.relative_to(ROOT)}:{number}"
                 for path in PACKAGE.rglob("*.py") if path.name != "_keras_compat.py"
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if pattern.search(line)]
    assert not offenders, offenders


def test_no_library_module_over_500_lines():
    """Files a reader can take in, each about one thing: a module past 500 lines is
    split by what its parts do (as ``robustness/report.py`` into the report, its
    evaluator and its checks)."""
    long = {str(path.relative_to(ROOT)): count for path in PACKAGE.rglob("*.py")
            if (count := len(path.read_text().splitlines())) > 500}
    assert not long, long


def test_nothing_points_outside_the_repository():
    files = [p for p in ROOT.rglob("*") if p.is_file() and p.suffix in (".py", ".md", ".toml", ".sh", ".cfg")
             and ".venv" not in p.parts and ".git" not in p.parts and "runs" not in p.parts]
    offenders = [str(p.relative_to(ROOT)) for p in files
                 if p.name != "test_structure.py" and re.search(r"\.\./shared|METHODS\.md", p.read_text())]
    assert not offenders, offenders


def _sections(markdown):
    """The numbers ("2") and titles ("ranks for a budget") of a markdown file's headings."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", markdown, re.MULTILINE):
        number = re.match(r"(\d+)\. ", heading)
        found.add(number.group(1) if number else heading.strip().lower())
    return found


def test_methods_pointers_name_sections_of_the_shipped_methods_file():
    """Docstrings cite "keras_lowrank/methods.md §n" (or a section's title): the file is
    in the package (so in every install, not only in a clone's docs/), and each cited
    section exists there."""
    methods = PACKAGE / "methods.md"
    sections = _sections(methods.read_text())
    assert {"1", "7", "ranks for a budget"} <= sections
    cited = []
    for path in PACKAGE.rglob("*.py"):
        text = " ".join(path.read_text().split())  # pointers may wrap
        assert "docs/methods.md" not in text, f"{path}: point to keras_lowrank/methods.md"
        for match in re.finditer(r"methods\.md(?: §(\d+)(?:[–-](\d+))?|, \"([^\"]+)\")?", text):
            first, last, title = match.groups()
            if title:
                cited.append((path.name, title.lower()))
            elif first:
                cited += [(path.name, str(n)) for n in range(int(first), int(last or first) + 1)]
    assert len(cited) > 20
    missing = [(name, section) for name, section in cited if section not in sections]
    assert not missing, missing


def test_the_methods_file_is_in_the_wheel(tmp_path):
    """Built as pip builds it: the wheel holds keras_lowrank/methods.md."""
    import shutil
    import subprocess
    import sys
    import zipfile

    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source)
    for name in ("keras_lowrank", "keras_lowrank_experiments"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path), str(source)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    assert "keras_lowrank/methods.md" in zipfile.ZipFile(wheel).namelist()


def test_docstring_examples_run():
    """Every ``>>>`` example in the package's docstrings runs and prints what it says."""
    import doctest
    import importlib
    import importlib.util

    # modules whose examples load optional datasets: run where the extra is installed
    # (CI installs it; the GPU image has neither package)
    needs = {"keras_lowrank.data": ("sklearn", "mnist1d")}
    tried = 0
    for name in sorted(_modules()):
        if name.endswith("__main__") or name in DEPRECATED_MODULES:
            continue
        if any(importlib.util.find_spec(package) is None for package in needs.get(name, ())):
            continue
        result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, name
        tried += result.attempted
    assert tried >= 2  # the examples exist (Perturbation's)


def test_core_imports_need_only_keras_and_numpy():
    """The package imports with scikit-learn, mnist1d and matplotlib absent; using
    what needs them names the extra to install."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for name in ('sklearn', 'mnist1d', 'matplotlib'):\n"
        "    sys.modules[name] = None  # importing it fails\n"
        "import keras_lowrank, keras_lowrank.analysis, keras_lowrank.robustness\n"
        "from keras_lowrank import data\n"
        "try:\n"
        "    data.load_digits_arrays('train')\n"
        "except ImportError as error:\n"
        "    print(error)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "keras-lowrank[data]" in done.stdout


PUBLIC_MODULES = ["keras_lowrank", "keras_lowrank.layers", "keras_lowrank.optimizers", "keras_lowrank.callbacks",
                  "keras_lowrank.compression", "keras_lowrank.analysis", "keras_lowrank.regularizers",
                  "keras_lowrank.data", "keras_lowrank.robustness", "keras_lowrank.precision"]


def public_objects():
    """Every class and function in the ``__all__`` of the public modules."""
    import importlib
    import inspect

    found = {}
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        assert hasattr(module, "__all__"), f"{module_name} has no __all__"
        for name in module.__all__:
            obj = getattr(module, name)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__.startswith("keras_lowrank"):
                found.setdefault(f"{obj.__module__}.{obj.__qualname__}", (f"{module_name}.{name}", obj))
    return found


def test_every_public_object_documents_args_returns_and_an_example():
    """Keras/optax style: Args, Returns (functions) or Attributes (result classes),
    and a runnable ``>>>`` Example (run by ``test_docstring_examples_run``)."""
    import inspect

    problems = []
    objects = public_objects()
    for public_name, obj in objects.values():
        doc = inspect.getdoc(obj) or ""
        missing = [] if ">>>" in doc else ["a >>> example"]
        if inspect.isfunction(obj):
            parameters = inspect.signature(obj).parameters
            if parameters and "Args:" not in doc:
                missing.append("Args:")
            if "Returns:" not in doc:
                missing.append("Returns:")
        elif (not issubclass(obj, Exception) and inspect.signature(obj).parameters
              and "Args:" not in doc and "Attributes:" not in doc):
            missing.append("Args: or Attributes:")
        if missing:
            problems.append(f"{public_name}: {', '.join(missing)}")
    assert len(objects) >= 50
    assert not problems, "\n".join(problems)


def test_the_api_reference_lists_every_public_object():
    text = "".join(p.read_text() for p in (ROOT / "docs" / "reference").glob("*.md"))
    listed = set(re.findall(r"^::: ([\w.]+)$", text, flags=re.M))
    missing = [public for public, obj in public_objects().values()
               if public not in listed and not any(
                   name.rpartition(".")[2] == obj.__name__ for name in listed)]
    assert not missing, missing
