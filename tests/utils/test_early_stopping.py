"""Early stopping: patience, min_delta and a state that survives a checkpoint."""

import math

from utils.early_stopping import EarlyStopping


def test_stops_after_patience_validations_without_improvement():
    es = EarlyStopping(patience=2, min_delta=0.1)
    assert es.step(1.0, 10) is True
    assert es.step(0.95, 20) is False  # better, but not by more than min_delta
    assert not es.should_stop
    assert es.step(0.97, 30) is False
    assert es.should_stop and es.best_step == 10 and es.best_loss == 1.0


def test_improvement_resets_the_count_and_nan_counts_as_no_improvement():
    es = EarlyStopping(patience=2)
    es.step(1.0, 1)
    es.step(math.nan, 2)
    es.step(0.5, 3)
    assert es.bad_validations == 0 and es.best_step == 3


def test_state_dict_round_trip_continues_the_count():
    es = EarlyStopping(patience=3)
    es.step(1.0, 1), es.step(2.0, 2)
    es2 = EarlyStopping(patience=3)
    es2.load_state_dict(es.state_dict())
    es2.step(2.0, 3), es2.step(2.0, 4)
    assert es2.should_stop and es2.best_loss == 1.0


def test_disabled_never_stops_but_tracks_the_best():
    es = EarlyStopping(patience=1, enabled=False)
    es.step(1.0, 1), es.step(2.0, 2), es.step(3.0, 3)
    assert not es.should_stop and es.best_loss == 1.0
