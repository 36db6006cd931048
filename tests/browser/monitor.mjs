// The web monitor in headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core),
// against a real `kiln serve` that tests/web_monitor.rs started (real SQLite, the real
// Ultralytics plugin, the stand-in `yolo`).
//
// env: KILN_URL, KILN_ADMIN_TOKEN, KILN_VIEWER_TOKEN, KILN_SCREENSHOTS (folder for the
// screenshots of each page), KILN_CHROMIUM (default /usr/bin/chromium).
// Exits 0 when every check holds; otherwise prints the failed step, saves failure.png, exits 1.

import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const base = process.env.KILN_URL;
const admin = process.env.KILN_ADMIN_TOKEN;
const viewer = process.env.KILN_VIEWER_TOKEN;
const shots = process.env.KILN_SCREENSHOTS || "screenshots";
const executablePath = process.env.KILN_CHROMIUM || "/usr/bin/chromium";
assert.ok(base && admin && viewer, "KILN_URL, KILN_ADMIN_TOKEN and KILN_VIEWER_TOKEN must be set");
mkdirSync(shots, { recursive: true });

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});

let step = "start";
const problems = [];
let current = null;

async function newPage(viewport = { width: 1366, height: 900 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.setDefaultTimeout(30_000);
  // Nothing but this server: no fonts, scripts or styles from elsewhere.
  page.on("request", (r) => {
    const u = r.url();
    if (!u.startsWith(base) && !u.startsWith("data:") && !u.startsWith("blob:")) problems.push(`external request: ${u}`);
  });
  page.on("pageerror", (e) => problems.push(`page error (${step}): ${e.message}`));
  // A refused token is a 401 the page expects (and says so); Chromium logs every 4xx it loads.
  page.on("console", (m) => {
    if (m.type() === "error" && !/status of 401/.test(m.text())) problems.push(`console error (${step}): ${m.text()}`);
  });
  current = page;
  return page;
}

async function shot(page, name) {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}

async function signIn(page, token) {
  await page.goto(`${base}/ui/`);
  await page.locator("#token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.locator("#nav").waitFor({ state: "visible" });
}

/** The error shown next to the option field `key`. */
const optionError = (page, key) => page.locator(`.field[data-key="${key}"] .field-error`);
const optionInput = (page, key) => page.locator(`.field[data-key="${key}"] input, .field[data-key="${key}"] select`);

try {
  // ---- A wrong token is refused at sign-in; the token never goes into the URL.
  step = "sign-in refused";
  let page = await newPage();
  await page.goto(`${base}/ui/`);
  await page.locator("#token").fill("kiln_not-a-real-token");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.locator("#sign-in-error").filter({ hasText: "refused" }).waitFor();
  await shot(page, "01-sign-in-refused");

  // ---- A viewer sees runs but no Start button anywhere.
  step = "viewer";
  await signIn(page, viewer);
  await page.locator("h1", { hasText: "Runs" }).waitFor();
  assert.equal(await page.locator('nav a[data-nav="start"]').isVisible(), false, "a viewer sees no Start training link");
  assert.equal(await page.getByRole("link", { name: "Start training" }).count(), 0, "a viewer sees no Start button");
  assert.ok(!page.url().includes(viewer), "the token is not in the URL");
  await shot(page, "02-viewer-runs");
  await page.goto(`${base}/ui/#/start`);
  await page.getByText("may not start trainings").waitFor();
  assert.equal(await page.locator("#start").count(), 0, "no Start button for a viewer");
  const viewerPage = page;

  // ---- Start a training as an admin.
  step = "admin sign-in";
  page = await newPage();
  await signIn(page, admin);
  await page.getByRole("link", { name: "Start training" }).first().click();
  await page.locator("h1", { hasText: "Start a training" }).waitFor();
  step = "start form";
  await page.locator("#framework").selectOption("ultralytics");
  await page.locator("#project").selectOption("demo");
  await page.locator("#release").selectOption("demo-release.zip");
  await page.locator("#extract").click();
  await page.locator("#class-names").waitFor();
  const classes = await page.locator("#class-names").innerText();
  assert.ok(classes.length > 1 && classes !== "—", `class names shown: ${classes}`);
  await page.locator("#training-name").fill("web1");
  // User mode offers only the safe options, from the server.
  await optionInput(page, "epochs").waitFor();
  assert.equal(await page.locator('.field[data-key="lr0"]').isVisible(), false, "user mode hides developer options");
  await shot(page, "03-start-user-mode");

  step = "preflight: a mistyped option";
  await optionInput(page, "epochs").fill("two");
  await page.locator("#preflight").click();
  await optionError(page, "epochs").filter({ hasText: "whole number" }).waitFor();
  assert.ok(await page.locator("#start").isDisabled(), "Start stays disabled");
  await shot(page, "04-preflight-invalid-option");

  step = "preflight: a developer option in user mode";
  await page.locator("#mode-developer").check();
  await optionInput(page, "lr0").waitFor();
  await optionInput(page, "lr0").fill("0.02");
  await page.locator("#mode-user").check();
  await optionInput(page, "epochs").fill("2");
  await page.locator("#preflight").click();
  await optionError(page, "lr0").filter({ hasText: /developer/i }).waitFor();
  assert.ok(await page.locator("#start").isDisabled(), "Start stays disabled while an option is refused");
  await shot(page, "05-preflight-refused-in-user-mode");

  step = "preflight: clean";
  await page.locator("#mode-developer").check();
  await optionInput(page, "lr0").fill("");
  await page.locator("#mode-user").check();
  await optionInput(page, "imgsz").fill("64");
  await page.locator("#preflight").click();
  await page.locator("#resolved").waitFor();
  const command = await page.locator("#command").innerText();
  assert.match(command, /yolo/, "the command line is shown");
  assert.match(command, /epochs=2/, "with the override");
  assert.match(await page.locator("#resolved").innerText(), /epochs: 2/);
  await page.locator("#start:not([disabled])").waitFor();
  await shot(page, "06-preflight-ok");
  // Changing the form asks for a new preflight.
  await page.locator("#training-name").fill("web1x");
  assert.ok(await page.locator("#start").isDisabled(), "a change disables Start until the next preflight");
  await page.locator("#training-name").fill("web1");
  await page.locator("#preflight").click();
  await page.locator("#start:not([disabled])").waitFor();

  step = "start";
  await page.locator("#start").click();
  await page.waitForURL(/#\/runs\/[0-9a-f-]+$/);
  const runId = decodeURIComponent(page.url().split("#/runs/")[1]);

  // ---- The run page, live.
  step = "preflight: a training name already taken";
  {
    const again = await newPage();
    await signIn(again, admin);
    await again.goto(`${base}/ui/#/start`);
    await again.locator("#project").selectOption("demo");
    await again.locator("#release").selectOption("demo-release.zip");
    await again.locator("#training-name").fill("web1");
    await optionInput(again, "epochs").waitFor();
    await again.locator("#training-name").press("Enter");
    await again.locator(".field-error", { hasText: "belongs to run" }).waitFor();
    assert.ok(await again.locator("#start").isDisabled(), "no Start for a taken name");
    await shot(again, "06b-preflight-name-taken");
    await again.context().close();
    current = page;
  }
  step = "run page: progress";
  await page.locator("#dag canvas").first().waitFor();
  await page.locator("#progress .pct", { hasText: "100 %" }).waitFor({ timeout: 120_000 });
  step = "run page: chart of both epochs";
  await page.locator('#metrics[data-epochs="1,2"]').waitFor({ timeout: 60_000 });
  assert.ok(await page.locator("#metrics .chart-losses canvas").count() >= 1, "a losses chart");
  assert.ok(await page.locator("#metrics .chart-quality canvas").count() >= 1, "a precision/recall/mAP chart");
  step = "run page: succeeded";
  await page.locator("#run-status", { hasText: "succeeded" }).waitFor({ timeout: 120_000 });
  await page.locator('#dag[data-statuses*="register:succeeded"]').waitFor();
  step = "run page: live log";
  await page.locator("#log-state", { hasText: "ended" }).waitFor({ timeout: 60_000 });
  const log = await page.locator("#log").innerText();
  assert.match(log, /Epoch|epoch/, `the trainer's log is shown: ${log.slice(0, 300)}`);
  step = "run page: checkpoints";
  await page.locator('#checkpoints tr[data-file="best.pt"]').waitFor();
  await shot(page, "07-run-succeeded");

  step = "export best";
  await page.locator("#export-best").click();
  await page.locator("#exported").waitFor();
  await shot(page, "08-exported");

  step = "model: publish";
  await page.locator("#run-model").click();
  await page.locator("#publish").click();
  await page.locator("#published").waitFor();
  await page.locator("#stage").selectOption("testing");
  await page.locator("#promote").click();
  await page.locator("#model-stage", { hasText: "testing" }).waitFor();
  await shot(page, "09-model-published");
  step = "models list";
  await page.locator('nav a[data-nav="models"]').click();
  await page.locator("#models tbody tr", { hasText: "published" }).first().waitFor();
  await shot(page, "10-models");
  step = "runs list";
  await page.locator('nav a[data-nav="runs"]').click();
  await page.locator(`tr[data-run="${runId}"]`, { hasText: "succeeded" }).waitFor();
  await page.locator("#success-rate", { hasText: "100 %" }).waitFor();
  // Counts of zero are shown as 0, not left empty.
  assert.match(await page.locator(".stats").innerText(), /0\s+running/);
  await shot(page, "11-runs");
  step = "runs list: the refresh keeps the keyboard focus";
  await page.locator(`tr[data-run="${runId}"] a`).focus();
  await page.waitForTimeout(2600);
  assert.equal(await page.evaluate(() => document.activeElement?.closest("tr")?.dataset.run), runId,
    "the focused run link is still focused after a refresh");
  step = "navigation: a page left while loading does not cover the next";
  await page.evaluate((id) => { location.hash = `#/runs/${id}`; location.hash = "#/models"; }, runId);
  await page.locator("h1", { hasText: "Models" }).waitFor();
  await page.waitForTimeout(1500);
  assert.equal(await page.locator("h1", { hasText: "Run " }).count(), 0, "the run page did not draw over Models");
  await page.locator('nav a[data-nav="runs"]').click();

  // ---- The viewer on the same run and model: nothing to click that changes anything.
  step = "viewer: run page";
  await viewerPage.goto(`${base}/ui/#/runs/${runId}`);
  await viewerPage.locator("#run-status", { hasText: "succeeded" }).waitFor();
  for (const id of ["#stop", "#retry", "#export-best"]) {
    assert.equal(await viewerPage.locator(id).count(), 0, `a viewer has no ${id}`);
  }
  await viewerPage.locator("#run-model").click();
  await viewerPage.locator("#published").waitFor();
  assert.equal(await viewerPage.locator("#publish, #promote").count(), 0, "a viewer cannot publish or promote");
  await shot(viewerPage, "12-viewer-model");

  // ---- A phone: no sideways scrolling, the run page still reads.
  step = "phone";
  const phone = await newPage({ width: 390, height: 844 });
  await signIn(phone, admin);
  await phone.goto(`${base}/ui/#/runs/${runId}`);
  await phone.locator("#run-status", { hasText: "succeeded" }).waitFor();
  const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `the run page fits a phone's width (overflow ${overflow}px)`);
  await shot(phone, "13-phone-run");

  // ---- Keyboard: the skip link comes first, then the navigation.
  step = "keyboard";
  await phone.reload();
  await phone.locator("#run-status", { hasText: "succeeded" }).waitFor();
  await phone.keyboard.press("Tab");
  assert.equal(await phone.evaluate(() => document.activeElement.className), "skip");
  const before = phone.url();
  await phone.keyboard.press("Enter");
  assert.equal(phone.url(), before, "the skip link stays on the page");
  assert.equal(await phone.evaluate(() => document.activeElement.id), "main", "and moves the focus to the content");
  await phone.reload();
  await phone.locator("#run-status", { hasText: "succeeded" }).waitFor();
  // The navigation works from the keyboard.
  for (let i = 0; i < 8; i++) {
    await phone.keyboard.press("Tab");
    if (await phone.evaluate(() => document.activeElement.dataset?.nav === "models")) break;
  }
  await phone.keyboard.press("Enter");
  await phone.waitForURL(/#\/models$/);

  step = "sign out";
  await page.locator("#sign-out").click();
  await page.locator("#token").waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.getItem("kiln.token")), null, "signing out forgets the token");

  assert.deepEqual(problems, [], "no external requests, page errors or console errors");
  console.log(`web monitor: every check held (run ${runId}); screenshots in ${shots}`);
  await browser.close();
} catch (e) {
  console.error(`web monitor: failed at step "${step}": ${e.stack || e}`);
  if (problems.length) console.error(`also: ${problems.join("\n")}`);
  if (current) await current.screenshot({ path: join(shots, "failure.png"), fullPage: true }).catch(() => {});
  await browser.close();
  process.exit(1);
}
