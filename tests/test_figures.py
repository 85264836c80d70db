"""Figure export: byte-identical files across re-runs."""
import matplotlib.pyplot as plt

from analysis_lib.figures import paper_style, save_figure


def test_figures_are_byte_identical_across_runs(tmp_path):
    paper_style()
    blobs = []
    for attempt in range(2):
        fig, ax = plt.subplots()
        ax.plot([0, 1, 2], [1, 0, 2])
        paths = save_figure(fig, tmp_path / str(attempt) / "fig")
        blobs.append([p.read_bytes() for p in paths])
    assert blobs[0] == blobs[1]
    assert b"CreationDate" not in blobs[0][0]
