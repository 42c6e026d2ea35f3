// Renders the documents from the JSON block, a batch at a time as the page scrolls (1,000 rows stay fast).
// Builds DOM nodes with textContent only: no markup is ever made from data. State lives in the URL hash
// (#filter=inconsistent&group=1&n=10&sort=1:asc), so a filtered view can be bookmarked or shared.
(function () {
  "use strict";
  const DATA = JSON.parse(document.getElementById("report-data").textContent);
  const BATCH = 25;
  const docsEl = document.getElementById("docs");
  const moreEl = document.getElementById("more");
  const countEl = document.getElementById("count");
  const groupEl = document.getElementById("group");
  const sortEl = document.getElementById("sort");
  const worstEl = document.getElementById("worst-n");
  const state = { filter: "all", group: DATA.groups.length - 1, n: 10, sort: "" };
  let list = [];
  let shown = 0;
  let observer = null;

  function kick() {
    if (!observer) return;
    observer.unobserve(moreEl);
    observer.observe(moreEl);
  }

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function readHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    if (params.has("filter")) state.filter = params.get("filter");
    if (params.has("group")) state.group = Math.min(DATA.groups.length - 1, Math.max(0, parseInt(params.get("group"), 10) || 0));
    if (params.has("n")) state.n = Math.max(1, parseInt(params.get("n"), 10) || 10);
    if (params.has("sort")) state.sort = params.get("sort");
  }

  function writeHash() {
    const params = new URLSearchParams({ filter: state.filter, group: state.group, n: state.n, sort: state.sort });
    history.replaceState(null, "", "#" + params.toString());
  }

  function matches(doc) {
    const g = state.group;
    const delta = doc.ted[g] - doc.ted[0];
    switch (state.filter) {
      case "fixed": return g > 0 && delta >= DATA.margin;
      case "broken": return g > 0 && delta <= -DATA.margin;
      case "inconsistent": return doc.verdict[g] === "inconsistent";
      case "label": return doc.label.length > 0;
      default: return true;
    }
  }

  function compute() {
    const g = state.group;
    let out = DATA.docs.map(function (doc, i) { return [doc, i]; }).filter(function (p) { return matches(p[0]); });
    if (state.filter === "worst") {
      out.sort(function (a, b) { return a[0].ted[g] - b[0].ted[g] || a[1] - b[1]; });
      out = out.slice(0, state.n);
    }
    if (state.sort) {
      const parts = state.sort.split(":");
      const sg = parseInt(parts[0], 10);
      const dir = parts[1] === "desc" ? -1 : 1;
      if (parts[1] === "conf") {  // least confident field first; documents without scores last
        const key = function (d) { return d.conf[sg] === null ? Infinity : d.conf[sg]; };
        out.sort(function (a, b) { return (key(a[0]) - key(b[0])) || a[1] - b[1]; });
      } else {
        out.sort(function (a, b) { return dir * (a[0].ted[sg] - b[0].ted[sg]) || a[1] - b[1]; });
      }
    }
    return out.map(function (p) { return p[0]; });
  }

  function cell(c) {
    const td = el("td", c ? c.s : "missing");
    if (!c || c.t === null || c.t === undefined) {
      td.textContent = "—";
    } else if (c.d) {
      c.d.forEach(function (seg) {
        td.appendChild(el(seg[0] === "-" ? "del" : seg[0] === "+" ? "ins" : "span", null, seg[1]));
      });
    } else {
      td.textContent = c.t;
    }
    if (c) td.title = c.s;
    if (c && c.p !== undefined) {  // the field's confidence: a coloured bar and the number
      td.classList.add(c.p >= 0.9 ? "conf-hi" : c.p >= 0.5 ? "conf-mid" : "conf-lo");
      td.dataset.conf = String(c.p);
      td.appendChild(el("span", "conf", c.p.toFixed(2)));
      td.title = c.s + ", confidence " + c.p.toFixed(3);
    }
    return td;
  }

  function renderDoc(doc) {
    const box = el("div", "doc");
    box.dataset.id = doc.id;
    const thumb = el("div", "thumb");
    if (doc.thumb) {
      const img = el("img");
      img.src = doc.thumb;
      img.alt = "receipt " + doc.id;
      img.loading = "lazy";
      img.addEventListener("click", function () { openViewer(doc); });
      thumb.appendChild(img);
    } else {
      thumb.appendChild(el("div", "noimg", "no image"));
    }
    box.appendChild(thumb);
    const body = el("div", "body");
    const title = el("h3", null, doc.id + " ");
    DATA.groups.forEach(function (name, g) {
      const failed = doc.failed[g].length ? " (" + doc.failed[g].join(", ") + ")" : "";
      title.appendChild(el("span", "badge " + doc.verdict[g],
        name + ": nTED " + doc.ted[g].toFixed(3) + ", " + (doc.valid[g] ? doc.verdict[g] : "not JSON") + failed
        + (doc.conf[g] === null ? "" : ", least confident field " + doc.conf[g].toFixed(2))));
    });
    if (doc.label.length) title.appendChild(el("span", "badge label", "label-error candidate: " + doc.label.join(", ")));
    body.appendChild(title);
    const table = el("table", "fields");
    const head = el("tr");
    ["field", "ground truth"].concat(DATA.groups).forEach(function (h) { head.appendChild(el("th", null, h)); });
    table.appendChild(head);
    doc.rows.forEach(function (row) {
      const tr = el("tr");
      tr.appendChild(el("td", "key", row.k));
      tr.appendChild(el("td", null, row.gt === null ? "—" : row.gt));
      row.c.forEach(function (c) { tr.appendChild(c ? cell(c) : el("td")); });
      table.appendChild(tr);
    });
    body.appendChild(table);
    box.appendChild(body);
    return box;
  }

  function renderMore() {
    const end = Math.min(list.length, shown + BATCH);
    const frag = document.createDocumentFragment();
    for (; shown < end; shown++) frag.appendChild(renderDoc(list[shown]));
    docsEl.appendChild(frag);
    docsEl.dataset.rendered = String(shown);
  }

  function refresh() {
    writeHash();
    document.querySelectorAll(".filters button").forEach(function (b) {
      b.classList.toggle("active", b.dataset.filter === state.filter);
    });
    groupEl.value = String(state.group);
    sortEl.value = state.sort;
    worstEl.value = String(state.n);
    list = compute();
    shown = 0;
    docsEl.replaceChildren();
    countEl.textContent = list.length + " of " + DATA.docs.length + " documents";
    docsEl.dataset.matching = String(list.length);
    docsEl.dataset.ids = list.map(function (d) { return d.id; }).join(" ");
    renderMore();
    kick();
  }

  function openViewer(doc) {
    const dlg = document.getElementById("viewer");
    const link = document.getElementById("viewer-link");
    document.getElementById("viewer-img").src = doc.full || doc.thumb;
    link.hidden = !doc.full;
    if (doc.full) link.href = doc.full;
    dlg.showModal();
  }

  document.getElementById("viewer-close").addEventListener("click", function () { document.getElementById("viewer").close(); });
  document.querySelectorAll(".filters button").forEach(function (b) {
    b.addEventListener("click", function () { state.filter = b.dataset.filter; refresh(); });
  });
  groupEl.addEventListener("change", function () { state.group = parseInt(groupEl.value, 10); refresh(); });
  sortEl.addEventListener("change", function () { state.sort = sortEl.value; refresh(); });
  worstEl.addEventListener("change", function () { state.n = Math.max(1, parseInt(worstEl.value, 10) || 10); refresh(); });
  // Observing again after each batch makes the observer report afresh, so it keeps filling the screen.
  observer = new IntersectionObserver(function (entries) {
    if (entries.some(function (e) { return e.isIntersecting; }) && shown < list.length) {
      renderMore();
      kick();
    }
  }, { rootMargin: "800px" });
  readHash();
  refresh();
})();
