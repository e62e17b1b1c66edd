"""The Dagster UI in a real browser: `dagster dev`, headless Chromium, a materialisation launched by clicks.

Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them); skipped without them. One
region (Monaco, the smallest bundled extract) in a temporary catalog, DAGSTER_HOME and warehouse.
Screenshots go to `test-artifacts/ui/` (git-ignored).
"""

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

from s2vec_assets import webserver

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.system,
    pytest.mark.browser,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="needs /usr/bin/chromium and /usr/bin/chromedriver (apt-get install chromium chromium-driver)",
    ),
]

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ARTIFACTS = REPO / "test-artifacts" / "ui"
MONACO = REPO / "data" / "osm" / "monaco-2023.osm.pbf"
REGION = "monaco"
LAUNCHED = ["osm_extract", "cell_features"]  # the first per-region assets: no model needed
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,1000",
]


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory):
    """`dagster dev` on a free port over a one-region catalog; yields (url, env); always terminated."""
    tmp = tmp_path_factory.mktemp("ui")
    home = tmp / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    catalog = tmp / "regions.toml"
    catalog.write_text(f'[regions.{REGION}]\nsource = "{MONACO}"\nbbox = [7.409, 43.723, 7.449, 43.752]\n')
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "S2VEC_WAREHOUSE": str(tmp / "warehouse"),
        "S2VEC_CATALOG": str(catalog),
        "S2VEC_REPORTS": str(tmp / "reports"),
    }
    env.pop("S2VEC_EXECUTOR", None)
    command = [str(BIN / "dagster"), "dev"]
    with webserver.serving(command, env, REPO, tmp / "dagster_dev.log", webserver.answers, 150) as port:
        yield f"http://{webserver.HOST}:{port}", env


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="s2vec-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.implicitly_wait(0)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait(driver, find, timeout: float = 60, what: str = "element"):
    """Poll `find(driver)` until it returns something truthy."""
    from selenium.common.exceptions import WebDriverException

    deadline = time.monotonic() + timeout
    while True:
        try:
            found = find(driver)
        except WebDriverException:  # not rendered yet, or re-rendered under our feet: try again
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(ARTIFACTS / "timeout.png"))
            raise AssertionError(f"timed out waiting for {what}; screenshot test-artifacts/ui/timeout.png")
        time.sleep(0.5)


def _open(driver, url: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url)
    _wait(driver, lambda d: d.find_elements(By.XPATH, "//*[normalize-space()='Lineage']"), what="the UI")
    time.sleep(1)
    for skip in driver.find_elements(By.XPATH, "//button[normalize-space()='Skip']"):  # newsletter pop-up
        if skip.is_displayed():
            skip.click()


def _shows(driver, names) -> set[str]:
    """Which of `names` the page holds, in its text or its markup (long names are truncated on screen)."""
    from selenium.webdriver.common.by import By

    text = driver.find_element(By.TAG_NAME, "body").text + driver.page_source
    return {name for name in names if name in text}


@pytest.mark.timeout(480)  # ~2.5-4 min: dagster dev starts in 60-90 s on a busy 2-core machine
def test_ui_lists_every_asset_and_check_and_materialises_a_region_by_clicks(dagster_dev, browser):
    import dagster as dg
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    url, env = dagster_dev
    # The expected names come from the Definitions the UI serves (same catalog, so same partitions).
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("S2VEC_CATALOG", env["S2VEC_CATALOG"])
        from s2vec_assets.definitions import defs as load_defs

        graph = load_defs().resolve_asset_graph()
    assets = {key.to_user_string() for key in graph.get_all_asset_keys()}
    checks: dict[str, set[str]] = {}
    for check in graph.asset_check_keys:
        checks.setdefault(check.asset_key.to_user_string(), set()).add(check.name)
    assert assets and checks

    # Every asset in the catalog, every check on its asset's Checks tab.
    _open(browser, f"{url}/assets")
    _wait(browser, lambda d: _shows(d, assets) == assets, what=f"all of {sorted(assets)} in the catalog")
    for asset, names in sorted(checks.items()):
        _open(browser, f"{url}/assets/{asset}?view=checks")
        _wait(browser, lambda d, n=names: _shows(d, n) == n, what=f"checks {sorted(names)} of {asset}")

    # The lineage graph with its groups expanded (Alt+E), every asset drawn as a node.
    _open(browser, f"{url}/asset-groups")
    _wait(
        browser,
        lambda d: d.find_elements(By.XPATH, "//button[starts-with(normalize-space(), 'Materialize')]"),
    )
    ActionChains(browser).key_down(Keys.ALT).send_keys("e").key_up(Keys.ALT).perform()

    def node(name):
        return browser.find_element(By.XPATH, f"//*[contains(@class, 'AssetNode_assetName') and .='{name}']")

    _wait(browser, lambda d: node(LAUNCHED[0]).is_displayed(), what="the expanded graph")
    time.sleep(1)
    browser.save_screenshot(str(ARTIFACTS / "asset_graph.png"))

    # Select the first per-region assets, "Materialize selected", pick the region, launch.
    node(LAUNCHED[0]).click()
    for name in LAUNCHED[1:]:
        ActionChains(browser).key_down(Keys.SHIFT).click(node(name)).key_up(Keys.SHIFT).perform()
    button = _wait(
        browser,
        lambda d: d.find_element(
            By.XPATH, f"//button[contains(., 'Materialize selected ({len(LAUNCHED)})')]"
        ),
        what="Materialize selected",
    )
    button.click()
    dialog = _wait(browser, lambda d: d.find_element(By.XPATH, "//*[@role='dialog']"), what="launch dialog")
    dialog.find_element(By.XPATH, ".//*[normalize-space()='Select a partition or create one']").click()
    ActionChains(browser).send_keys(REGION).perform()
    option = _wait(
        browser,
        lambda d: [
            e
            for e in d.find_elements(
                By.XPATH, f"//*[@role='listbox' or @role='menu']//*[normalize-space()='{REGION}']"
            )
            if e.is_displayed()
        ],
        what=f"partition {REGION} in the picker",
    )
    option[0].click()
    _wait(browser, lambda d: "1 partition" in d.find_element(By.XPATH, "//*[@role='dialog']").text)
    browser.save_screenshot(str(ARTIFACTS / "launch_dialog.png"))
    launch = browser.find_element(
        By.XPATH, "//*[@role='dialog']//button[starts-with(normalize-space(), 'Launch')]"
    )
    launch.click()

    # The run the UI launched (a backfill's run for the region), followed in the UI until it succeeds.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAGSTER_HOME", env["DAGSTER_HOME"])
        with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
            run = _wait(browser, lambda d: instance.get_runs(limit=1), timeout=90, what="a launched run")[0]
            _open(browser, f"{url}/runs/{run.run_id}")
            done = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
            _wait(
                browser,
                lambda d: instance.get_run_by_id(run.run_id).status in done,
                timeout=200,
                what="the run to finish",
            )
            run = instance.get_run_by_id(run.run_id)
            materialised = {
                key.to_user_string()
                for key in instance.get_asset_keys()
                if instance.get_materialized_partitions(key) == {REGION}
            }
            events = [e.dagster_event for e in instance.all_logs(run.run_id) if e.dagster_event]
    # The UI's run went through the run launcher into its own process and, with the default in-process
    # executor, ran every step there (no step subprocesses).
    run_pids = {e.pid for e in events if e.event_type == dg.DagsterEventType.RUN_START}
    step_pids = {e.pid for e in events if e.event_type == dg.DagsterEventType.STEP_START}
    assert len(run_pids) == 1 and step_pids == run_pids
    _open(browser, f"{url}/runs/{run.run_id}")
    _wait(browser, lambda d: "Success" in d.find_element(By.TAG_NAME, "body").text, what="Success on the run")
    time.sleep(2)
    browser.save_screenshot(str(ARTIFACTS / "run.png"))
    assert run.status == dg.DagsterRunStatus.SUCCESS, run.status
    assert run.tags.get("dagster/partition") == REGION
    assert set(LAUNCHED) <= materialised
