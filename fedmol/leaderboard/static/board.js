(function () {
  function cellValue(row, idx) {
    var c = row.cells[idx];
    return c ? c.getAttribute("data-value") : null;
  }
  function sortTable(table, key, dir) {
    var th = table.querySelector('th[data-key="' + key + '"]');
    if (!th) return false;
    var idx = Array.prototype.indexOf.call(th.parentNode.children, th);
    var num = th.getAttribute("data-type") === "num";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var va = cellValue(a, idx), vb = cellValue(b, idx);
      var ea = va === null || va === "", eb = vb === null || vb === "";
      if (ea || eb) return ea === eb ? 0 : (ea ? 1 : -1);  /* missing values always last */
      var c = num ? parseFloat(va) - parseFloat(vb) : va.localeCompare(vb);
      return dir === "desc" ? -c : c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.querySelectorAll("th"), function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir === "desc" ? "descending" : "ascending");
    table.setAttribute("data-sort", key + ":" + dir);
    return true;
  }
  function fromHash() {
    var m = /(?:^#|&)sort=([^&]+)/.exec(window.location.hash);
    if (!m) return;
    var parts = decodeURIComponent(m[1]).split(":");
    var table = document.getElementById(parts[0]);
    if (table && parts.length === 3) sortTable(table, parts[1], parts[2] === "desc" ? "desc" : "asc");
  }
  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("table.board"), function (table) {
      Array.prototype.forEach.call(table.querySelectorAll("th[data-key]"), function (th) {
        th.addEventListener("click", function () {
          var key = th.getAttribute("data-key");
          var cur = table.getAttribute("data-sort") || "";
          var first = th.getAttribute("data-type") === "num" ? "desc" : "asc";
          var dir = cur === key + ":" + first ? (first === "desc" ? "asc" : "desc") : first;
          sortTable(table, key, dir);
          if (window.history && window.history.replaceState) {
            window.history.replaceState(null, "", "#sort=" + encodeURIComponent(table.id + ":" + key + ":" + dir));
          }
        });
      });
    });
    fromHash();
  });
  window.addEventListener("hashchange", fromHash);
  window.fedmolSortTable = sortTable;
})();
