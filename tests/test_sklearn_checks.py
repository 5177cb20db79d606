"""scikit-learn's own estimator checks on fastreg.sklearn's MLPs (nothing skipped or xfailed)."""
import pytest

pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install 'fastreg[sklearn]')")

from sklearn.utils.estimator_checks import parametrize_with_checks

from fastreg.sklearn import MLPClassifier, MLPRegressor


@parametrize_with_checks([MLPClassifier(max_iter=100, random_state=0),
                          MLPRegressor(max_iter=100, random_state=0)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
