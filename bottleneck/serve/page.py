"""The page at `/`: drop (or pick) an image, see it beside the model's top-k classes. One HTML
document with inline CSS and script (no CDN: it works offline), posting to /predict."""

from __future__ import annotations

import html
import json

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>bottleneck: __TITLE__</title>
<style>
 body { font: 15px/1.4 system-ui, sans-serif; margin: 0; background: #f6f7f9; color: #1d2330; }
 main { max-width: 880px; margin: 0 auto; padding: 24px; }
 h1 { font-size: 20px; margin: 0 0 4px; } .sub { color: #5b6475; margin: 0 0 18px; }
 #drop { border: 2px dashed #9aa4b8; border-radius: 10px; padding: 28px; text-align: center;
         background: #fff; cursor: pointer; }
 #drop.over { border-color: #2f6fec; background: #eef4ff; }
 #result { display: flex; gap: 24px; margin-top: 22px; align-items: flex-start; }
 #preview { max-width: 320px; max-height: 320px; border-radius: 8px; display: none; }
 #top { flex: 1; } .row { margin: 0 0 10px; } .name { display: flex; justify-content: space-between; }
 .bar { height: 10px; background: #dde2ea; border-radius: 5px; overflow: hidden; }
 .bar span { display: block; height: 100%; background: #2f6fec; }
 .row:first-child .name { font-weight: 600; font-size: 17px; }
 #error { color: #b3261e; margin-top: 14px; } #token { display: none; margin-top: 12px; }
 input[type=password] { padding: 6px; width: 260px; }
</style></head>
<body><main>
<h1>__TITLE__</h1>
<p class="sub">__SUBTITLE__</p>
<div id="drop">Drop an image here, or click to choose one
 <input id="pick" type="file" accept="image/*" hidden></div>
<div id="token">This server needs its token: <input id="tokenvalue" type="password"
 placeholder="bearer token"></div>
<div id="error" role="alert"></div>
<div id="result"><img id="preview" alt="the uploaded image"><div id="top"></div></div>
</main>
<script>
const INFO = __INFO__;
const drop = document.getElementById("drop"), pick = document.getElementById("pick");
const errorBox = document.getElementById("error"), topBox = document.getElementById("top");
const tokenBox = document.getElementById("token"), tokenValue = document.getElementById("tokenvalue");
if (INFO.needs_token) tokenBox.style.display = "block";
tokenValue.value = sessionStorage.getItem("bottleneck-token") || "";
drop.addEventListener("click", () => pick.click());
pick.addEventListener("change", () => pick.files[0] && classify(pick.files[0]));
drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", e => {
  e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files[0]) classify(e.dataTransfer.files[0]);
});
async function classify(file) {
  errorBox.textContent = ""; topBox.innerHTML = "";
  const preview = document.getElementById("preview");
  preview.src = URL.createObjectURL(file); preview.style.display = "block";
  const form = new FormData(); form.append("file", file, file.name);
  const headers = {};
  if (tokenValue.value) {
    headers["Authorization"] = "Bearer " + tokenValue.value;
    sessionStorage.setItem("bottleneck-token", tokenValue.value);
  }
  const response = await fetch("predict", {method: "POST", body: form, headers});
  const body = await response.json();
  if (!response.ok) {
    errorBox.textContent = body.error || ("error " + response.status);
    if (response.status === 401) tokenBox.style.display = "block";
    return;
  }
  for (const [name, p] of body.predictions[0].top_k) {
    const row = document.createElement("div"); row.className = "row";
    row.innerHTML = '<div class="name"><span></span><span></span></div>' +
                    '<div class="bar"><span></span></div>';
    row.querySelector(".name span").textContent = name;
    row.querySelector(".name span:last-child").textContent = (100 * p).toFixed(1) + " %";
    row.querySelector(".bar span").style.width = (100 * p).toFixed(1) + "%";
    topBox.appendChild(row);
  }
  document.body.dataset.label = body.predictions[0].label;
}
</script></body></html>
"""


def page_html(description: dict, needs_token: bool) -> str:
    """The page for a model: its file name and classes in the heading, the upload below."""
    name = description["model"].rsplit("/", 1)[-1]
    classes = description["classes"]
    shown = ", ".join(classes[:12]) + (f" and {len(classes) - 12} more" if len(classes) > 12
                                        else "")
    subtitle = (f"{description['kind']} model, {len(classes)} classes: {shown}. "
                f"Images are resized to {' and '.join(map(str, description['image_sizes']))} px.")
    info = json.dumps({"needs_token": needs_token, "classes": classes}).replace("<", "\\u003c")
    return (_PAGE.replace("__TITLE__", html.escape(name)).replace("__SUBTITLE__",
                                                                  html.escape(subtitle))
            .replace("__INFO__", info))
