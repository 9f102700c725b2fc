// Drives the real OHIF viewer in headless Debian Chromium (playwright-core, no
// browser download) and checks that every study reaches the screen.
//
//   node tests/viewer/viewer.mjs --base URL --studies studies.json --mode NAME
//        --out DIR [--only KEY] [--skip-list 1] [--timeout-ms N]
//
// --base: where OHIF is served; --studies: the JSON tests/viewer/studies.py wrote;
// --mode: a label for screenshots and messages; --out: the screenshot directory.
// It opens the study list and requires every study's patient name there (unless
// --skip-list), then opens each study (/viewer?StudyInstanceUIDs=...) and requires
// a real image on the viewport canvas within --timeout-ms: at least
// MIN_LIT_FRACTION and MIN_LIT_PIXELS of the canvas lit and at least
// MIN_GREY_LEVELS distinct grey levels. The negative control runs this very check
// with the frames refused and expects it to fail.
// Exit code 0 when every check holds, 1 when one fails, 2 when the harness itself
// broke. A JSON report (per study: the pixel figures, the DICOMweb requests that
// failed with status and headers, console errors) goes to OUT/<mode>.json.
//
// Env: KASTELL_VIEWER_NODE_MODULES (where playwright-core is installed),
//      CHROMIUM (default /usr/bin/chromium).
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';

// Thresholds. A blank viewport is all black (0 lit pixels, 0 levels): OHIF's error
// and "loading" states draw nothing on the canvas (the negative control measures
// exactly that), and a thin line or a few letters stay far below 2 % of it. The
// real images here light 15 % (the US, mostly black around its sector) to 88 %
// (the MR) of a 955x842 canvas with 140 to 238 levels.
const LIT_LEVEL = 16; // a pixel is lit when its luminance (0..255) exceeds this
const MIN_LIT_FRACTION = 0.02; // of the canvas area
const MIN_LIT_PIXELS = 5000;
const MIN_GREY_LEVELS = 32; // distinct luminance values among the lit pixels
const MIN_PIXELS_PER_LEVEL = 4; // a level counts when this many pixels have it
// Scrolling a multi-frame stack: the overlay must name a later frame and the
// canvas must change (mean absolute difference of a 16x16 grid of mean grey
// levels). Identical renderings differ by exactly 0; frame 6 of the US cine
// here differs from frame 1 by about 0.8, since only the heart moves.
const MIN_FRAME_CHANGE = 0.25;

function parseArgs(argv) {
  const args = { timeoutMs: 45000 };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '');
    const value = argv[i + 1];
    if (value === undefined) throw new Error(`missing value for ${argv[i]}`);
    args[key.replace(/-([a-z])/g, (_, c) => c.toUpperCase())] = value;
  }
  for (const k of ['base', 'studies', 'mode', 'out']) {
    if (!args[k]) throw new Error(`--${k} is required`);
  }
  args.timeoutMs = Number(args.timeoutMs);
  return args;
}

let args;
let chromium;
try {
  args = parseArgs(process.argv.slice(2));
  const require = createRequire(
    path.join(process.env.KASTELL_VIEWER_NODE_MODULES || path.join(process.cwd(), 'node_modules'), 'x.js')
  );
  ({ chromium } = require('playwright-core'));
} catch (err) {
  console.error(`viewer.mjs: ${err.message || err}`);
  process.exit(2); // not "the check failed" (1)
}

const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  // Offline and hermetic: only loopback resolves.
  '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
];

// Runs in the page: statistics of the largest cornerstone canvas.
function canvasStats({ litLevel, perLevel }) {
  const canvases = [...document.querySelectorAll('canvas')].filter(
    c => c.width > 64 && c.height > 64 && c.closest('[data-viewport-uid], .viewport-element, .cornerstone-viewport-element')
  );
  const all = canvases.length ? canvases : [...document.querySelectorAll('canvas')];
  if (!all.length) return { canvases: 0 };
  const canvas = all.reduce((a, b) => (a.width * a.height >= b.width * b.height ? a : b));
  const copy = document.createElement('canvas');
  copy.width = canvas.width;
  copy.height = canvas.height;
  const ctx = copy.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(canvas, 0, 0);
  const data = ctx.getImageData(0, 0, copy.width, copy.height).data;
  const hist = new Uint32Array(256);
  let lit = 0;
  for (let i = 0; i < data.length; i += 4) {
    const y = Math.round(0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2]);
    if (y > litLevel) {
      lit++;
      hist[y]++;
    }
  }
  let levels = 0;
  for (let v = 0; v < 256; v++) if (hist[v] >= perLevel) levels++;
  const total = copy.width * copy.height;
  // A coarse 16x16 luminance grid, to tell one frame from another.
  const grid = [];
  const gw = copy.width / 16;
  const gh = copy.height / 16;
  for (let gy = 0; gy < 16; gy++) {
    for (let gx = 0; gx < 16; gx++) {
      let sum = 0;
      let n = 0;
      for (let y = Math.floor(gy * gh); y < Math.floor((gy + 1) * gh); y += 2) {
        for (let x = Math.floor(gx * gw); x < Math.floor((gx + 1) * gw); x += 2) {
          const i = 4 * (y * copy.width + x);
          sum += 0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2];
          n++;
        }
      }
      grid.push(n ? sum / n : 0);
    }
  }
  const rect = canvas.getBoundingClientRect();
  return {
    centerX: rect.left + rect.width / 2,
    centerY: rect.top + rect.height / 2,
    grid,
    canvases: all.length,
    width: copy.width,
    height: copy.height,
    lit,
    litFraction: lit / total,
    levels,
    png: copy.toDataURL('image/png'),
  };
}

function isImage(s) {
  return (
    s &&
    s.canvases > 0 &&
    s.lit >= MIN_LIT_PIXELS &&
    s.litFraction >= MIN_LIT_FRACTION &&
    s.levels >= MIN_GREY_LEVELS
  );
}

function brief(s) {
  if (!s || !s.canvases) return 'no canvas';
  return `${s.width}x${s.height} canvas, ${s.lit} lit px (${(100 * s.litFraction).toFixed(1)} %), ${s.levels} grey levels`;
}

function savePng(dataUrl, file) {
  fs.writeFileSync(file, Buffer.from(dataUrl.replace(/^data:image\/png;base64,/, ''), 'base64'));
}

// A page whose DICOMweb exchanges and console errors are recorded: failures
// are reported with their status and headers.
async function trackedPage(context) {
  const page = await context.newPage();
  const exchanges = [];
  const consoleErrors = [];
  const dicomweb = url => /\/dicomweb\/|\/wado\?/.test(url);
  page.on('response', async resp => {
    const url = resp.url();
    if (!dicomweb(url)) return;
    const entry = {
      method: resp.request().method(),
      url,
      status: resp.status(),
      contentType: (resp.headers()['content-type'] || '').replace(/;\s*boundary=[^;]*/i, ''),
      accept: resp.request().headers()['accept'] || '',
    };
    exchanges.push(entry);
    if (resp.status() >= 400) entry.headers = await resp.allHeaders().catch(() => resp.headers());
  });
  page.on('requestfailed', req => {
    if (dicomweb(req.url())) {
      exchanges.push({ method: req.method(), url: req.url(), status: 0, error: req.failure()?.errorText });
    }
  });
  page.on('console', msg => {
    if (msg.type() === 'error') consoleErrors.push(msg.text().split('\n')[0].slice(0, 500));
  });
  page.on('pageerror', err => consoleErrors.push(`pageerror: ${String(err).split('\n')[0].slice(0, 500)}`));
  return { page, exchanges, consoleErrors };
}

// Polls the canvas until isImage(stats) and accept(stats) or the deadline.
async function waitForImage(page, deadline, accept = () => true) {
  let stats = null;
  while (true) {
    stats = await page
      .evaluate(canvasStats, { litLevel: LIT_LEVEL, perLevel: MIN_PIXELS_PER_LEVEL })
      .catch(e => ({ canvases: 0, error: String(e) }));
    if ((isImage(stats) && accept(stats)) || Date.now() >= deadline) return stats;
    await page.waitForTimeout(250);
  }
}

// The first image, once the viewport has its final size: OHIF may draw it in a
// 256x256 canvas before the layout settles (seen on a loaded machine), and a
// mouse wheel aimed at that canvas's centre then misses the stack. Waits until
// two looks a moment apart show a canvas of the same size.
async function settledImage(page, deadline) {
  let stats = await waitForImage(page, deadline);
  while (isImage(stats) && Date.now() < deadline) {
    await page.waitForTimeout(500);
    const again = await waitForImage(page, deadline);
    if (!isImage(again)) return again;
    if (again.width === stats.width && again.height === stats.height) return again;
    stats = again;
  }
  return stats;
}

// OHIF's first-visit tour ("Scrolling Through Images", "Skip all") covers part
// of the screen; it is not part of the image, dismiss it when it is there.
async function dismissTour(page) {
  const skip = page.getByText('Skip all', { exact: true });
  if (await skip.isVisible().catch(() => false)) await skip.click({ timeout: 2000 }).catch(() => {});
}

function gridDifference(a, b) {
  if (!a?.grid || !b?.grid || a.grid.length !== b.grid.length) return 0;
  let sum = 0;
  for (let i = 0; i < a.grid.length; i++) sum += Math.abs(a.grid[i] - b.grid[i]);
  return sum / a.grid.length;
}

async function checkStudyList(context, studies, report, failures) {
  const { page } = await trackedPage(context);
  const t0 = Date.now();
  await page.goto(`${args.base}/`, { waitUntil: 'domcontentloaded' });
  const names = studies.map(s => s.patient_name);
  const variants = n => [n, n.replace(/\^/g, ', '), n.replace(/\^/g, ' ')];
  const listed = await page
    .waitForFunction(
      wanted => {
        const text = document.body.innerText;
        return wanted.every(n => [n, n.replace(/\^/g, ', '), n.replace(/\^/g, ' ')].some(v => text.includes(v)));
      },
      names,
      { timeout: args.timeoutMs, polling: 250 }
    )
    .then(() => true)
    .catch(() => false);
  await page.screenshot({ path: path.join(args.out, `${args.mode}-study-list.png`) });
  const text = await page.evaluate(() => document.body.innerText);
  const shown = names.filter(n => variants(n).some(v => text.includes(v)));
  const ms = Date.now() - t0;
  report.studyList = { shown: shown.length, expected: names.length, ms };
  console.log(`  [${args.mode}] study list: ${shown.length}/${names.length} stored studies shown (${ms} ms)`);
  if (!listed) {
    const missing = names.filter(n => !shown.includes(n));
    failures.push(`study list shows ${shown.length}/${names.length} studies; missing ${missing.join(', ')}`);
  }
  await page.close();
}

async function checkStudy(context, study, report, failures) {
  const { page, exchanges, consoleErrors } = await trackedPage(context);
  const t0 = Date.now();
  const url = `${args.base}/viewer?StudyInstanceUIDs=${encodeURIComponent(study.study_uid)}`;
  await page.goto(url, { waitUntil: 'domcontentloaded' });
  const stats = await settledImage(page, Date.now() + args.timeoutMs);
  const ms = Date.now() - t0;
  const got = isImage(stats);
  if (stats?.png) savePng(stats.png, path.join(args.out, `${args.mode}-${study.key}-canvas.png`));

  // A multi-frame image: scroll the stack with the mouse wheel; a later frame
  // (its own .../frames/N request) must be a real image too, and a different one.
  let scrolled = null;
  if (got && study.frames > 1) {
    await dismissTour(page);
    await page.mouse.move(stats.centerX, stats.centerY);
    for (let i = 0; i < 5; i++) {
      await page.mouse.wheel(0, 120);
      await page.waitForTimeout(60);
    }
    const later = await waitForImage(page, Date.now() + 10000, s => gridDifference(stats, s) > MIN_FRAME_CHANGE);
    // OHIF's overlay: "I:6 (6/30)".
    const overlay = await page.evaluate(() => (document.body.innerText.match(/\((\d+\/\d+)\)/) || [])[1] || '');
    scrolled = { image: isImage(later), difference: gridDifference(stats, later), overlay, stats: { ...later, png: undefined, grid: undefined } };
    if (later?.png) savePng(later.png, path.join(args.out, `${args.mode}-${study.key}-scrolled-canvas.png`));
    const frameShown = Number(overlay.split('/')[0]);
    if (!scrolled.image || scrolled.difference <= MIN_FRAME_CHANGE || !(frameShown > 1)) {
      failures.push(`${study.key}: scrolling the multi-frame stack did not show another frame (${brief(later)}, difference ${scrolled.difference.toFixed(2)})`);
    }
  }
  await dismissTour(page);
  const shot = path.join(args.out, `${args.mode}-${study.key}.png`);
  await page.screenshot({ path: shot });

  const failed = exchanges.filter(e => e.status >= 400 || e.status === 0);
  const frames = exchanges.filter(e => /\/frames\//.test(e.url));
  const entry = {
    key: study.key,
    study_uid: study.study_uid,
    transfer_syntax: study.transfer_syntax,
    image: got,
    ms,
    stats: stats ? { ...stats, png: undefined, grid: undefined } : null,
    scrolled,
    frameRequests: frames.length,
    frameContentTypes: [...new Set(frames.filter(e => e.status > 0 && e.status < 400).map(e => e.contentType))],
    frameAccepts: [...new Set(frames.map(e => e.accept).filter(Boolean))],
    failedRequests: failed,
    consoleErrors: consoleErrors.slice(0, 20),
    screenshot: shot,
  };
  report.studies.push(entry);
  console.log(
    `  [${args.mode}] ${study.key.padEnd(20)} ${(got ? 'IMAGE' : 'no image').padEnd(8)} ${brief(stats)}; ` +
      `${frames.length} frame request(s), ${failed.length} failed; ${ms} ms` +
      (scrolled ? `; scrolled to ${scrolled.overlay || '?'}: ${scrolled.image ? 'image' : 'NO image'}, Δ ${scrolled.difference.toFixed(1)}` : '')
  );
  for (const f of failed.slice(0, 5)) {
    console.log(`      failed: ${f.method} ${f.url} -> ${f.status} ${f.error || ''} ${f.headers ? JSON.stringify(f.headers) : ''}`);
  }
  if (!got) {
    failures.push(`${study.key}: no image on the canvas (${brief(stats)})`);
    for (const e of consoleErrors.slice(0, 5)) console.log(`      console: ${e}`);
  }
  await page.close();
}

async function main() {
  const studies = JSON.parse(fs.readFileSync(args.studies, 'utf-8')).filter(
    s => !args.only || s.key === args.only
  );
  if (!studies.length) throw new Error(`no study to open (--only ${args.only})`);
  fs.mkdirSync(args.out, { recursive: true });
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_FLAGS,
    timeout: 60000,
  });
  const failures = [];
  const report = { mode: args.mode, base: args.base, studies: [] };
  try {
    // One profile for the run (the bundles are cached across pages), one page per study.
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    if (!args.skipList) await checkStudyList(context, studies, report, failures);
    for (const study of studies) await checkStudy(context, study, report, failures);
  } finally {
    await browser.close().catch(() => {});
  }
  report.failures = failures;
  fs.writeFileSync(path.join(args.out, `${args.mode}.json`), JSON.stringify(report, null, 2));
  if (failures.length) {
    for (const f of failures) console.log(`  [${args.mode}] FAIL: ${f}`);
    process.exit(1);
  }
}

main().catch(err => {
  console.error(`viewer.mjs: ${err.stack || err}`);
  process.exit(2);
});
