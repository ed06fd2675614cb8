"""Names users do not control (class folders, file names, paths) stay text everywhere the audit writes them."""

from __future__ import annotations

from xml.etree import ElementTree as ET

from PIL import Image

from tests.conftest import read_results

HOSTILE = ["<script>alert(1)", "{{7*7}}", "\"quo'te", "ñandú 日本", "<img src=x onerror=alert(1)>"]


def test_hostile_class_names_paths_and_file_names_stay_text(audit, tmp_path, digits_test):
    images, labels = digits_test
    names = HOSTILE + [str(i) for i in range(5, 10)]
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(names), encoding="utf-8")
    data = tmp_path / "<b>{{7*7}}"
    for i in range(40):
        folder = data / names[int(labels[i])]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((images[i, 0] * 255).round().byte().numpy()).save(folder / f"<i>{i}.png")
    (data / HOSTILE[0] / "<script>x.png").write_bytes(b"")  # unreadable, so named in the report
    out = tmp_path / "out"
    r = audit(
        "run",
        "--classes",
        classes,
        "--data",
        data,
        "--probes",
        "filters,augment",
        "--set",
        "augment.shifts=contrast",
        "--gate",
        "augment.score >= 0.99",
        "--out",
        out,
    )
    assert r.code == 1, r  # the gate fails: contrast breaks digits-cnn
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "<script>alert" not in html and "<script>x" not in html and "<img src=x" not in html and "<b>{{" not in html
    assert "&lt;script&gt;x.png" in html and "{{7*7}}" in html
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "<b>" not in summary and "&lt;b&gt;" in summary  # GitHub renders raw tags in a job summary
    suite = ET.parse(out / "junit.xml").getroot()  # a JUnit parser accepts it
    assert suite.tag == "testsuite" and int(suite.get("failures")) == 1
    facts = read_results(out)["data"]
    assert facts["skipped"] == 1 and "<script>x.png" in facts["skipped_files"][0]  # JSON keeps the real name
