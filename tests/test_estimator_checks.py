"""The custom heads honour scikit-learn's estimator contract (sklearn.utils.estimator_checks).

Checks that cannot apply are named with the reason in EXPECTED_FAILED (empty means all pass)."""

from __future__ import annotations

from sklearn.utils.estimator_checks import parametrize_with_checks

from features.heads.estimators import NumpyMLP, TemperedKernelSVC, TemperedLinearSVC, TemperedSGD

ESTIMATORS = [TemperedLinearSVC(), TemperedKernelSVC(), TemperedSGD(),
              NumpyMLP(hidden=16, max_epochs=10, patience=2, learning_rate=0.02)]


def expected_failed(estimator) -> dict:
    return EXPECTED_FAILED.get(type(estimator).__name__, {})


# check_class_weight_classifiers weights one class 1000 and the others 1e-4 and wants 87 % of
# predictions on the heavy class; the CLI only ever passes class_weight='balanced'.
EXPECTED_FAILED = {
    "TemperedSGD": {"check_class_weight_classifiers":
                    "averaged hinge-loss SGD (50 passes) stays below the check's 0.87 on "
                    "1000:1e-4 dict weights"},
    "NumpyMLP": {"check_class_weight_classifiers":
                 "10 epochs (kept short so the checks run in seconds) stay below the check's "
                 "0.87 on 1000:1e-4 dict weights"},
}


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=expected_failed)
def test_sklearn_contract(estimator, check):
    check(estimator)
