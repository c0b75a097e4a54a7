"""What install.py should pip-install, decided without touching the environment.

The WebUI pins its own packages (torch, transformers, gradio, ...) and reinstalls every pin that
differs at each start, so an extension that changes one causes reinstall loops. The rules here:

- a package that is already installed is never installed again, whatever its version, with one
  exception: a line marked ``@strict`` says its version cannot work where its ``@when`` fails (e.g.
  lycoris-lora 4.1.3 needs torch >= 2.4); found installed on such a host (an earlier install of ours),
  it is replaced by the line that holds there — never for a package the host pins;
- a missing package gets the version known to work with what the host has (``@when`` conditions);
- every pip call carries a constraints file that holds the host's pinned packages at their
  installed versions, so pip fails instead of upgrading one of them as a dependency.

This module must import with the standard library and ``packaging`` only (pip's vendored copy if
needed): install.py loads it by file path before our dependencies exist.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional, Sequence

try:
    from packaging.markers import Marker
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.version import InvalidVersion, Version
except ImportError:  # a bare venv: pip carries its own copy
    from pip._vendor.packaging.markers import Marker
    from pip._vendor.packaging.requirements import InvalidRequirement, Requirement
    from pip._vendor.packaging.specifiers import InvalidSpecifier, SpecifierSet
    from pip._vendor.packaging.version import InvalidVersion, Version

# Pinned by the WebUI 1.10 launcher (requirements_versions.txt, torch from TORCH_COMMAND).
# Used on top of the host's own pin file, and alone when that file can't be found.
ALWAYS_PROTECTED = (
    "torch", "torchvision", "torchaudio", "xformers",
    "transformers", "tokenizers", "accelerate", "safetensors", "gradio", "gradio-client",
    "numpy", "pillow", "fastapi", "pydantic", "protobuf", "open-clip-torch",
    "pytorch-lightning", "setuptools",
)

# Never installed by an extension, even if a requirement file lists them.
FORBIDDEN = ("torch", "torchvision", "torchaudio", "xformers")


def canonical_name(name: str) -> str:
    """PEP 503 form: 'Lycoris_Lora' and 'lycoris-lora' are the same distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Condition:
    """`<package><specifier>` on a package of the host, e.g. transformers<4.41.2."""
    package: str
    specifier: SpecifierSet

    def holds(self, installed: Mapping[str, str]) -> bool:
        version = installed.get(self.package)
        if not version:
            return False  # missing or unknown version: a condition on it can't be trusted
        try:
            return self.specifier.contains(Version(version), prereleases=True)
        except InvalidVersion:
            return False

    def __str__(self) -> str:
        return f"{self.package}{self.specifier}"


@dataclass(frozen=True)
class Alternative:
    """One line of the requirement file: a pinned version and when to use it."""
    name: str                       # canonical distribution name
    spec: str                       # "diffusers==0.30.3", as pip gets it
    marker: Optional[Marker] = None
    when: tuple = ()                # Condition, all must hold
    optional: bool = False
    strict: bool = False            # this version cannot work where `when` fails: replace it there
    line: str = ""                  # "<file>:<line>" for error messages


@dataclass(frozen=True)
class Decision:
    name: str
    action: str                     # "install" | "present" | "unsupported" | "not-needed"
    reason: str
    spec: Optional[str] = None
    optional: bool = False

    def pip_args(self, constraints_file: Optional[str] = None) -> str:
        """The argument string for launch.run_pip (which prepends `python -m pip`)."""
        if self.action != "install":
            raise ValueError(f"{self.name}: nothing to install ({self.action}: {self.reason})")
        args = f'install "{self.spec}"'
        if constraints_file:
            args += f' --constraint "{constraints_file}"'
        return args


@dataclass
class Requirements:
    """Alternatives grouped by package, in file order."""
    by_name: dict = field(default_factory=dict)

    def names(self) -> list:
        return list(self.by_name)

    def condition_packages(self) -> set:
        return {c.package for alts in self.by_name.values() for a in alts for c in a.when}


def parse_requirements(lines: Iterable[str], source: str = "requirements") -> Requirements:
    """Parse the extension's requirement lines.

    Format: ``name==version [; pip-marker] [@when pkg<spec>[, pkg<spec>]] [@strict] [@optional]``, ``#`` comments.
    """
    reqs = Requirements()
    for number, raw in enumerate(lines, start=1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        where = f"{source}:{number}"
        optional = False
        strict = False
        when: list = []
        parts = re.split(r"\s+(?=@)", text)
        head, flags = parts[0].strip(), parts[1:]
        for flag in flags:
            flag = flag.strip()
            if flag == "@optional":
                optional = True
            elif flag == "@strict":
                strict = True
            elif flag.startswith("@when "):
                when += _parse_conditions(flag[len("@when "):], where)
            else:
                raise ValueError(f"{where}: unknown flag {flag!r}; use '@when <package><specifier>', '@strict' or '@optional'")
        try:
            req = Requirement(head)
        except InvalidRequirement as e:
            raise ValueError(f"{where}: {head!r} is not a requirement ({e}); write it as name==version") from e
        pins = [s for s in req.specifier if s.operator == "=="]
        if len(pins) != 1 or len(req.specifier) != 1 or req.extras or req.url:
            raise ValueError(f"{where}: {head!r} must pin one exact version (name==version) so every user gets a tested one")
        name = canonical_name(req.name)
        if name in FORBIDDEN:
            raise ValueError(f"{where}: {name} is installed by the WebUI itself; remove it from the extension's requirements")
        reqs.by_name.setdefault(name, []).append(Alternative(
            name=name, spec=f"{req.name}=={pins[0].version}", marker=req.marker,
            when=tuple(when), optional=optional, strict=strict, line=where))
    return reqs


def _parse_conditions(text: str, where: str) -> list:
    """'torch>=2.0,<2.4, numpy<2': a part without a package name extends the previous range."""
    specs: dict = {}
    last = None
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"([A-Za-z][A-Za-z0-9._-]*)?\s*((?:===|[<>=!~]=?)\s*\S+)", part)
        if not m or (m.group(1) is None and last is None):
            raise ValueError(f"{where}: bad condition {part!r}; write it like 'transformers<4.41.2' or 'torch>=2.0,<2.4'")
        if m.group(1) is not None:
            last = canonical_name(m.group(1))
        specs.setdefault(last, []).append(m.group(2).replace(" ", ""))
    out = []
    for package, parts in specs.items():
        try:
            out.append(Condition(package, SpecifierSet(",".join(parts))))
        except InvalidSpecifier as e:
            raise ValueError(f"{where}: bad version range for {package} in {text!r}: {e}") from e
    return out


def normalize_installed(installed: Mapping[str, Optional[str]]) -> dict:
    return {canonical_name(k): (v or "") for k, v in installed.items()}


def _pinned_version(alternative: Alternative) -> Optional[Version]:
    try:
        return Version(alternative.spec.split("==", 1)[1])
    except InvalidVersion:
        return None


def _stale_own_pin(alternatives: list, have: dict, environment: Optional[dict]) -> Optional[Decision]:
    """An install Decision when the installed version is exactly a @strict line whose @when fails on
    this host (and no line with that version holds) while another line holds; else None."""
    name = alternatives[0].name
    try:
        version = Version(have[name])
    except InvalidVersion:
        return None
    applicable = [a for a in alternatives if a.marker is None or a.marker.evaluate(environment)]
    holds = [a for a in applicable if all(c.holds(have) for c in a.when)]
    same = [a for a in applicable if _pinned_version(a) == version]
    if not any(a.strict for a in same) or not holds or any(a in holds for a in same):
        return None
    chosen = holds[0]
    failed = sorted({f"{c}, this host has {c.package} {have.get(c.package) or 'none'}"
                     for a in same if a.strict for c in a.when if not c.holds(have)})
    return Decision(name, "install", f"{have[name]} installed needs {'; '.join(failed)}: replaced by the version "
                    f"tested here", spec=chosen.spec, optional=chosen.optional)


def plan(requirements: "Sequence[str] | Requirements", installed: Mapping[str, Optional[str]],
         environment: Optional[dict] = None, protected: Iterable[str] = ()) -> list:
    """One Decision per package of the requirement list, in file order.

    `installed` maps distribution names to versions ("" or None when the version is unknown but
    the package is importable: it still counts as present). `environment` overrides pip marker
    variables (python_version, sys_platform, ...) for tests. `protected`: the host's pinned names,
    never replaced, not even at a @strict version.
    """
    reqs = requirements if isinstance(requirements, Requirements) else parse_requirements(requirements)
    have = normalize_installed(installed)
    held = {canonical_name(n) for n in protected}
    decisions = []
    for name, alternatives in reqs.by_name.items():
        optional = all(a.optional for a in alternatives)
        if name in have and have[name] and name not in held:
            stale = _stale_own_pin(alternatives, have, environment)
            if stale is not None:
                decisions.append(stale)
                continue
        if name in have:
            version = have[name] or "unknown version"
            decisions.append(Decision(name, "present", f"{version} already installed, left as it is", optional=optional))
            continue
        applicable = [a for a in alternatives if a.marker is None or a.marker.evaluate(environment)]
        if not applicable:
            decisions.append(Decision(name, "not-needed", "not needed on this Python/platform", optional=optional))
            continue
        chosen = next((a for a in applicable if all(c.holds(have) for c in a.when)), None)
        if chosen is None:
            host = ", ".join(sorted({f"{c.package} {have.get(c.package) or 'missing'}" for a in applicable for c in a.when}))
            decisions.append(Decision(name, "unsupported", f"no tested version for this host ({host})", optional=optional))
            continue
        why = "missing"
        if chosen.when:
            why += "; chosen for " + ", ".join(f"{c.package} {have[c.package]}" for c in chosen.when)
        decisions.append(Decision(name, "install", why, spec=chosen.spec, optional=chosen.optional))
    return decisions


def plan_installs(requirements: "Sequence[str] | Requirements", installed: Mapping[str, Optional[str]],
                  constraints_file: Optional[str] = None, environment: Optional[dict] = None,
                  protected: Iterable[str] = ()) -> list:
    """pip argument strings, one pip call per package to install (so an optional failure stays alone)."""
    return [d.pip_args(constraints_file) for d in plan(requirements, installed, environment, protected)
            if d.action == "install"]


def host_pinned_names(pin_file_lines: Iterable[str]) -> set:
    """Names in a WebUI requirements_versions.txt (pinned or not: the launcher owns them all)."""
    names = set()
    for raw in pin_file_lines:
        text = raw.split("#", 1)[0].strip()
        m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)", text)
        if m and not text.startswith("-"):
            names.add(canonical_name(m.group(1)))
    return names


def protected_names(pin_file_lines: Optional[Iterable[str]] = None) -> set:
    names = {canonical_name(n) for n in ALWAYS_PROTECTED}
    if pin_file_lines is not None:
        names |= host_pinned_names(pin_file_lines)
    return names


def constraint_lines(installed: Mapping[str, Optional[str]], protected: Iterable[str]) -> list:
    """`name==version` for every protected package that is installed with a valid version.

    pip then keeps them exactly as they are or fails: it never swaps the host's torch or transformers
    for a dependency of ours. Unparsable versions are left out (pip would reject the whole file).
    """
    have = normalize_installed(installed)
    lines = []
    for name in sorted({canonical_name(n) for n in protected}):
        version = have.get(name)
        if not version:
            continue
        try:
            Version(version)
        except InvalidVersion:
            continue
        lines.append(f"{name}=={version}")
    return lines


def names_to_query(requirements: Requirements, protected: Iterable[str]) -> list:
    """Every distribution whose presence/version the plan depends on."""
    return sorted(set(requirements.names()) | requirements.condition_packages() | {canonical_name(n) for n in protected})
