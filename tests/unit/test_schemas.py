from pathlib import Path

from shelfcast.contracts import export_schemas, render_schemas, stale_schemas

REPO_SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "contracts"


def test_committed_schemas_match_the_models() -> None:
    assert stale_schemas(REPO_SCHEMAS) == [], "run: shelfcast contracts export"


def test_every_topic_has_a_schema() -> None:
    assert sorted(render_schemas()) == sorted(p.name for p in REPO_SCHEMAS.glob("*.schema.json"))


def test_stale_detection_names_changed_missing_and_orphaned_files(tmp_path: Path) -> None:
    export_schemas(tmp_path)
    assert stale_schemas(tmp_path) == []
    (tmp_path / "shelfcast.events.schema.json").write_text("{}")
    (tmp_path / "shelfcast.prices.schema.json").unlink()
    (tmp_path / "shelfcast.gone.schema.json").write_text("{}")
    assert stale_schemas(tmp_path) == [
        "shelfcast.events.schema.json",
        "shelfcast.gone.schema.json",
        "shelfcast.prices.schema.json",
    ]
