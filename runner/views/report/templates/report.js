(function () {
  function copy(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    var area = document.createElement('textarea');
    area.value = text;
    document.body.appendChild(area);
    area.select();
    try { document.execCommand('copy'); } finally { area.remove(); }
    return Promise.resolve();
  }
  // Times are written in UTC; the reader sees their own local time (ISO in the tooltip).
  document.querySelectorAll('time[datetime]').forEach(function (node) {
    var when = new Date(node.getAttribute('datetime'));
    if (!isNaN(when.getTime())) {
      node.textContent = when.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
    }
  });
  var viewer = document.getElementById('viewer');
  document.addEventListener('click', function (event) {
    var button = event.target.closest('button.copy');
    if (button) {
      copy(button.getAttribute('data-copy')).then(function () {
        button.textContent = 'Copied';
        setTimeout(function () { button.textContent = 'Copy'; }, 1500);
      }, function () { button.textContent = 'Select it'; });
      return;
    }
    var image = event.target.closest('img.sample');
    if (image && viewer.showModal) {
      document.getElementById('viewer-img').src = image.src;
      document.getElementById('viewer-caption').textContent =
        image.alt + ' (' + image.naturalWidth + ' \u00d7 ' + image.naturalHeight + ' px as embedded)';
      var link = document.getElementById('viewer-original');
      var original = image.getAttribute('data-original');
      link.hidden = !original;
      if (original) { link.href = original; }
      viewer.showModal();
      return;
    }
    if (event.target.closest('#viewer a')) { return; }
    if (event.target === viewer || event.target.closest('#viewer')) { viewer.close(); }
  });
  var filter = document.getElementById('filter');
  filter.addEventListener('input', function () {
    var needle = filter.value.trim().toLowerCase();
    document.querySelectorAll('.card').forEach(function (card) {
      var hay = card.getAttribute('data-search');
      card.classList.toggle('hidden', needle !== '' && hay.indexOf(needle) < 0);
    });
  });
})();
