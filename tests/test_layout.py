"""The house: imports point down the layers with no circle, studies/ in four wings, the stores
as the only code that touches a study's attributes, no crowded folder."""

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Each unit (a top-level module, a package, or a wing of studies/) imports only from units of
# lower layers. The README's layout draws the same map.
LAYERS = [
    {"errors", "cpus", "metrics", "process", "studies.statistics"},
    {"shipped", "yaml_files", "outputs"},
    {"config", "images"},
    {"models", "regularization", "data", "tracking", "studies", "studies.engine"},
    {"diagnostics"},
    {"training"},
    {"export", "studies.ablations", "studies.searches"},
    {"predict"},
    {"api"},
    {"cnnlab"},
    {"cli"},
    {"__main__"},
]
STORES = {"cnnlab.studies.engine.store", "cnnlab.studies.ablations.store",
          "cnnlab.studies.searches.store"}
ATTRIBUTE_ACCESS = re.compile(r"\b(user_attrs|set_user_attr|system_attrs|set_system_attr|"
                              r"enqueue_trial)\b")
MOST_MODULES = 15


def _imports(path: Path) -> set[str]:
    """Every cnnlab module ``path`` imports: at the top, inside functions, under TYPE_CHECKING."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cnnlab"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("cnnlab"))
    return found


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
            for p in (ROOT / "cnnlab").rglob("*.py")}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {m for m in _imports(path) if m in modules and m != name}
            for name, path in modules.items()}


def _unit(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "cnnlab"
    return f"studies.{parts[2]}" if parts[1] == "studies" and len(parts) > 3 else parts[1]


def test_no_import_circles_in_cnnlab() -> None:
    graph = _graph()
    on_path: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        assert module not in on_path, f"import circle: {' → '.join([*on_path, module])}"
        if module in done:
            return
        on_path.append(module)
        for imported in sorted(graph[module]):
            visit(imported)
        on_path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
    assert graph["cnnlab.config"] <= {"cnnlab.errors", "cnnlab.yaml_files", "cnnlab.shipped"}
    assert graph["cnnlab.shipped"] == {"cnnlab.errors"}


def test_imports_point_down_the_layers() -> None:
    layer = {unit: i for i, units in enumerate(LAYERS) for unit in units}
    upward = []
    for module, imported in _graph().items():
        assert _unit(module) in layer, f"{module}: its unit {_unit(module)!r} has no layer"
        upward += [f"{module} → {m}" for m in imported
                   if _unit(m) != _unit(module) and layer[_unit(m)] >= layer[_unit(module)]]
    assert not upward, upward


def test_the_statistics_wing_is_pure_and_the_engine_knows_no_study_kind() -> None:
    graph = _graph()
    for module, imported in graph.items():
        if _unit(module) == "studies.statistics":
            assert {_unit(m) for m in imported} <= {"studies.statistics"}, module
            assert not re.search(r"^\s*(import|from) (optuna|torch|lightning|wandb)\b",
                                 _modules()[module].read_text(), re.M), module
        if _unit(module) == "studies.engine":
            assert not {m for m in imported if _unit(m).startswith("studies.")
                        and _unit(m) != "studies.engine"}, module
        if _unit(module) in ("studies.ablations", "studies.searches"):
            other = {"studies.ablations": "studies.searches",
                     "studies.searches": "studies.ablations"}[_unit(module)]
            assert not {m for m in imported if _unit(m) == other}, module


def test_only_the_stores_touch_study_and_trial_attributes() -> None:
    """A study's saved state has one owner per study kind: no other module reads or writes
    attributes, queues trials, or imports an attribute's name."""
    modules = _modules()
    names = set()
    for store in STORES:
        tree = ast.parse(modules[store].read_text())
        for node in tree.body:
            if isinstance(node, ast.Assign):
                target, value = node.targets[0], node.value
                pairs = (zip(target.elts, value.elts, strict=False)
                         if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple)
                         else [(target, value)])
                names |= {t.id for t, v in pairs if isinstance(t, ast.Name) and t.id.isupper()
                          and isinstance(v, ast.Constant) and isinstance(v.value, str)}
    assert {"KEY", "ARM", "SEED", "LOOKS", "SEED_PLAN", "PLANNED", "RESOLVED", "FOLD_SCORES",
            "WANDB_STEP", "SPEC"} <= names
    for module, path in modules.items():
        if module in STORES:
            continue
        text = path.read_text()
        assert not ATTRIBUTE_ACCESS.search(text), f"{module}: {ATTRIBUTE_ACCESS.search(text)}"
        imported = {m.rsplit(".", 1)[1] for m in _imports(path) if m.rsplit(".", 1)[0] in STORES}
        assert not imported & names, (module, imported & names)


def test_no_folder_holds_more_than_fifteen_modules() -> None:
    for folder in [ROOT / "cnnlab", *(p for p in (ROOT / "cnnlab").rglob("*") if p.is_dir())]:
        modules = [p for p in folder.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
        assert len(modules) <= MOST_MODULES, (folder, len(modules))


def test_the_wheel_lists_every_package() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "cnnlab").rglob("__init__.py")}
    assert packages <= listed, packages - listed
