"""The figures: real PNG files with the tutorial's layout."""

import numpy as np

from jaxlin.runs import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    return path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 1000


def test_weights_share_one_symmetric_seismic_scale(tmp_path):
    weights = np.random.default_rng(0).normal(size=(784, 10)).astype(np.float32)
    weights[0, 3] = 7.0
    fig = plots.plot_weights(weights, tmp_path / "w.png", [f"Weights: {d}" for d in range(10)])
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 10
    assert {im.get_clim() for im in images} == {(-7.0, 7.0)}
    assert {im.get_cmap().name for im in images} == {"seismic"}
    assert len(fig.axes) == 12 + 1  # 3 x 4 grid and a colour bar
    assert _is_png(tmp_path / "w.png")


def test_image_grid_captions(tmp_path):
    images = np.zeros((9, 784), np.uint8)
    labels, predictions = np.arange(9), np.arange(9)[::-1]
    fig = plots.plot_images(images, labels, predictions, tmp_path / "g.png")
    captions = [ax.get_xlabel() for ax in fig.axes]
    assert captions[0] == "True: 0, Pred: 8" and len(captions) == 9
    assert _is_png(tmp_path / "g.png")


def test_misclassified_shows_only_errors(tmp_path):
    labels = np.array([1, 2, 3, 4])
    predictions = np.array([1, 0, 3, 0])
    count = plots.plot_misclassified(np.zeros((4, 784), np.uint8), labels, predictions, tmp_path / "m.png")
    assert count == 2 and _is_png(tmp_path / "m.png")


def test_confusion_matrix_and_learning_curve(tmp_path):
    plots.plot_confusion_matrix(np.arange(100).reshape(10, 10), tmp_path / "c.png")
    plots.plot_learning_curve([{"step": 0, "test_accuracy": 0.1}, {"step": 10, "test_accuracy": 0.9}],
                              tmp_path / "l.png")
    assert _is_png(tmp_path / "c.png") and _is_png(tmp_path / "l.png")


def test_the_sweep_figure_draws_a_line_per_combination_of_the_settings_besides_the_learning_rate(tmp_path):
    """Members that differ in weight decay (or clip norm...) at one learning rate are not joined in one line."""
    from jaxlin.runs.plots import plot_sweep

    members = [{"index": i, "learning_rate": lr, "weight_decay": wd, "seed": 0, "data_seed": None,
                "diverged_at_step": None, "validation_accuracy": acc, "test_accuracy": acc,
                "validation_curve": [0.1, acc], "final_train_loss": 0.3}
               for i, (lr, wd, acc) in enumerate([(0.1, 0.0, 0.90), (0.5, 0.0, 0.91), (0.1, 1e-4, 0.89),
                                                  (0.5, 1e-4, 0.92)])]
    curves = np.array([m["validation_curve"] for m in members])
    fig = plot_sweep(members, [0, 10], curves, 3, tmp_path / "sweep.png")
    left = fig.axes[0]
    labels = [line.get_label() for line in left.get_lines()]
    assert labels == ["weight decay 0.0", "weight decay 0.0001"]
    assert [list(line.get_xdata()) for line in left.get_lines()] == [[0.1, 0.5], [0.1, 0.5]]
    assert (tmp_path / "sweep.png").exists()


def test_the_sweep_learning_curves_show_whole_lines_when_there_are_few_evaluations(tmp_path):
    """Two evaluations (steps 0 and the last): the panel holds the lines from their 10% start, not just
    their ends; with many, it zooms onto where the curves go after the start."""
    from jaxlin.runs.plots import plot_sweep

    members = [{"index": i, "learning_rate": lr, "seed": 0, "diverged_at_step": None, "validation_accuracy": acc,
                "test_accuracy": acc, "final_train_loss": 0.3} for i, (lr, acc) in enumerate([(0.1, 0.90),
                                                                                             (0.5, 0.93)])]
    short = np.array([[0.1, 0.90], [0.1, 0.93]])
    low, high = plot_sweep(members, [0, 10], short, 1, tmp_path / "short.png").axes[1].get_ylim()
    assert low <= 10 and 93 < high <= 101
    long = np.array([[0.1, 0.80, 0.85, 0.88, 0.90], [0.1, 0.82, 0.88, 0.91, 0.93]])
    low, high = plot_sweep(members, [0, 10, 20, 30, 40], long, 1, tmp_path / "long.png").axes[1].get_ylim()
    assert 70 < low < 80 and 93 < high <= 101
    nothing = np.full((2, 2), np.nan)
    assert plot_sweep(members, [0, 10], nothing, None, tmp_path / "nan.png").axes[1].get_ylim() == (0, 100)


def test_the_weights_note_of_a_user_model_names_its_params_layout(tiny_data):
    """A user's model's params (a dict, say) are not jaxlin's dense layers: the note says so, not that its
    first layer is not dense (jaxlin cannot tell); the cnn's note still names its first layer."""
    from jaxlin.models import get_model
    from jaxlin.runs.outputs import figure_plan

    cnn = get_model("cnn")
    user = cnn._replace(name="mymodels:TinyMLP")
    params = {"Dense_0": {"kernel": np.zeros((784, 32)), "bias": np.zeros(32)}}
    assert figure_plan(tiny_data, user, params)[2] == [
        "(No weights figure: mymodels:TinyMLP's params are not jaxlin's dense layers ([{\"w\", \"b\"}, ...]).)"]
    assert figure_plan(tiny_data, cnn, params)[2] == ["(No weights figure: the first layer of the cnn is not dense.)"]
