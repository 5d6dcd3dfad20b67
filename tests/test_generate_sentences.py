"""scripts/sentences/generate.py: the speech recipe's sentence lists are deterministic, distinct and held out."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("generate_sentences", os.path.join(ROOT, "scripts", "sentences", "generate.py"))
gen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen)


def test_lists_are_deterministic_distinct_and_disjoint():
    train, held = gen.split_sentences()
    assert (train, held) == gen.split_sentences()
    assert len(train) == gen.N_TRAIN >= 1500 and len(held) == gen.N_EVAL >= 50
    assert len(set(train)) == len(train) and len(set(held)) == len(held)
    assert not set(train) & set(held)


def test_extra_training_list_repeats_neither_list_and_leaves_them_unchanged():
    train, held, extra = gen.split_sentences(n_extra=gen.N_EXTRA)
    assert (train, held) == gen.split_sentences()
    assert len(extra) == len(set(extra)) == gen.N_EXTRA
    assert not set(extra) & (set(train) | set(held))
    assert len(train) + len(extra) >= 3000


def test_sentences_look_like_english_sentences():
    train, held = gen.split_sentences(200, 20, seed=7)
    for s in train + held:
        assert s[0].isupper() and s[-1] in ".?!", s
        assert "|" not in s and "  " not in s  # metadata.csv separator, no holes in the grammar
        assert 4 <= len(s.split()) <= 30, s


def test_committed_lists_are_up_to_date():
    assert gen.main(["--check"]) == 0, "run python scripts/sentences/generate.py and commit the lists"
