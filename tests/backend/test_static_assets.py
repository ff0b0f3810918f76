"""The dashboard's files: one address per content (immutable for a year), gzip on the wire, a
page that names every module to preload, and nothing outside the frontend folder."""

import gzip
import re
import shutil
from pathlib import Path

import pytest

from backend.app import FRONTEND_DIR
from backend.static_assets import IMMUTABLE, StaticAssets, accepts_gzip


@pytest.fixture
def client(make_client):
    return make_client()


def page_assets(client) -> tuple[str, str]:
    """(the page's text, its asset base `/assets/<build>`)."""
    page = client.get("/")
    assert page.status_code == 200
    base = re.search(r'src="(/assets/[0-9a-f]{12})/js/bundle\.js"', page.text).group(1)
    return page.text, base


def test_the_page_names_this_build_and_loads_its_modules_as_one_file(client):
    page = client.get("/")
    assert page.headers["cache-control"] == "no-cache"  # it carries the build: always revalidated
    text, base = page_assets(client)
    assert "{{" not in text
    # One script, preloaded from the head: every module app.js reaches, linked into one file.
    assert re.findall(r"<script[^>]*>", text) == [f'<script type="module" src="{base}/js/bundle.js">']
    assert re.findall(r'<link rel="modulepreload" href="([^"]+)">', text) == [f"{base}/js/bundle.js"]
    assert f'href="{base}/css/style.css"' in text
    # The charting bundle is not on the page: js/plotly.js loads it when a chart needs it.
    assert "vendor/" not in text
    bundle = client.get(f"{base}/js/bundle.js")
    assert bundle.status_code == 200 and bundle.headers["content-type"].startswith("text/javascript")
    assert bundle.headers["cache-control"] == "public, max-age=31536000, immutable"
    linked = {line.removeprefix("// ---- ") for line in bundle.text.splitlines()
              if line.startswith("// ---- ")}
    assert linked == {path.name for path in (FRONTEND_DIR / "js").glob("*.js")}
    # Its source map beside it (a debugger shows the module files), and the module files
    # themselves (also for `import(window.sparsescope.modules + "x.js")`).
    source_map = client.get(f"{base}/js/bundle.js.map")
    assert source_map.status_code == 200 and source_map.json()["sources"][-1] == "app.js"
    assert client.get(f"{base}/js/codec.js").content == (FRONTEND_DIR / "js" / "codec.js").read_bytes()


def test_an_asset_is_immutable_compressed_and_revalidated(client):
    _, base = page_assets(client)
    raw = (FRONTEND_DIR / "js" / "app.js").read_bytes()
    plain = client.get(f"{base}/js/app.js", headers={"Accept-Encoding": "identity"})
    assert plain.status_code == 200
    assert plain.content == raw
    assert "content-encoding" not in plain.headers
    assert plain.headers["cache-control"] == IMMUTABLE
    assert plain.headers["content-type"].startswith("text/javascript")
    assert plain.headers["vary"] == "Accept-Encoding"
    # httpx would decode the body itself: read the bytes as sent.
    with client.stream("GET", f"{base}/js/app.js", headers={"Accept-Encoding": "gzip"}) as packed:
        assert packed.headers["content-encoding"] == "gzip"
        body = b"".join(packed.iter_raw())
    assert gzip.decompress(body) == raw
    assert len(body) < len(raw) / 2
    again = client.get(f"{base}/js/app.js", headers={"If-None-Match": plain.headers["etag"]})
    assert again.status_code == 304
    assert again.content == b""


def test_the_vendored_chart_bundle_is_served_with_its_license(client):
    _, base = page_assets(client)
    bundle = client.get(f"{base}/vendor/plotly-cartesian.min.js")
    assert bundle.status_code == 200
    assert b"plotly.js (cartesian" in bundle.content[:200]
    license_text = client.get(f"{base}/vendor/plotly-LICENSE.txt")
    assert license_text.status_code == 200 and "MIT License" in license_text.text
    assert client.get("/vendor/plotly.min.js").status_code == 404  # the old full bundle is gone
    assert client.get("/static/js/app.js").status_code == 404  # as is the old unversioned path


def test_a_page_from_an_older_build_still_gets_todays_file_uncached(client):
    stale = client.get("/assets/000000000000/js/app.js")
    assert stale.status_code == 200
    assert stale.content == (FRONTEND_DIR / "js" / "app.js").read_bytes()
    assert stale.headers["cache-control"] == "no-cache"


@pytest.mark.parametrize("name", ["index.html", "js/missing.js", "../backend/app.py",
                                  "js/../../pyproject.toml", "%2e%2e/pyproject.toml", "", "js/"])
def test_nothing_but_the_folders_files(client, name):
    _, base = page_assets(client)
    response = client.get(f"{base}/{name}")
    assert response.status_code == 404, name


def test_the_build_changes_with_any_file(tmp_path):
    folder = tmp_path / "frontend"
    shutil.copytree(FRONTEND_DIR, folder)
    before = StaticAssets(folder).build
    assert StaticAssets(folder).build == before  # a hash of the content, not of the time
    path = folder / "js" / "text.js"
    path.write_text(path.read_text() + "\n// changed\n")
    assert StaticAssets(folder).build != before
    (folder / ".hidden").write_text("not served")  # dotfiles are neither served nor hashed
    assert ".hidden" not in StaticAssets(folder).files


@pytest.mark.parametrize("header, expected", [
    ("gzip, deflate, br", True), ("br;q=1.0, gzip;q=0.8", True), ("*", True),
    ("identity", False), ("", False), ("gzip;q=0", False), ("gzip;q=abc", False),
    ("deflate", False), ("GZIP", True),
])
def test_accepts_gzip(header, expected):
    assert accepts_gzip(header) is expected


def test_the_frontend_folder_has_no_stray_path_escape(client):
    # Every served name is a real file below the folder (symlinks resolved inside it too).
    assets = client.app.state.assets
    for name, path in assets.files.items():
        assert Path(path).resolve().is_relative_to(FRONTEND_DIR.resolve()), name


def test_no_file_may_take_the_bundles_name(tmp_path):
    """js/bundle.js is built from the modules: a file of that name would be shadowed."""
    folder = tmp_path / "frontend"
    shutil.copytree(FRONTEND_DIR, folder, ignore=shutil.ignore_patterns("vendor"))
    (folder / "js" / "bundle.js").write_text("export const stale = 1;\n")
    with pytest.raises(ValueError, match="js/bundle.js is built from the modules"):
        StaticAssets(folder)
