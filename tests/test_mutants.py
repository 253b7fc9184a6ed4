"""scripts/mutants.py stays runnable: every planted bug still finds the code it changes, and the
tests named to catch it exist (a move of the package once left every patch inapplicable)."""

from __future__ import annotations

import importlib.util
import sys

from conftest import REPO


def _mutants_module():
    spec = importlib.util.spec_from_file_location("mutants_script", REPO / "scripts" / "mutants.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_mutant_applies_once_and_names_existing_tests():
    mutants = _mutants_module()
    assert len(mutants.MUTANTS) >= 50
    problems = []
    for mu in mutants.MUTANTS:
        file = mutants.locate(REPO, mu.file)
        text = (REPO / file).read_text() if (REPO / file).is_file() else ""
        if text.count(mu.old) != 1:
            problems.append(f"{mu.name}: old string found {text.count(mu.old)} times in {file}")
        if mu.old == mu.new:
            problems.append(f"{mu.name}: the patch changes nothing")
        problems += [f"{mu.name}: no {t}" for t in mutants.whole_files(mu.tests) if not (REPO / t).exists()]
    assert not problems, "\n".join(problems)
