// 人员与证明: the register upload's progress bar, and buttons that send a form once.
// Progressive enhancement: without this file the forms post as plain HTML forms.
(function () {
  "use strict";

  function show(el, text) {
    if (!el) { return; }
    el.textContent = text;
    el.hidden = !text;
  }

  function sizeText(bytes) {
    return bytes >= 1048576 ? Math.floor(bytes / 1048576) + " MB" : Math.max(1, Math.floor(bytes / 1024)) + " KB";
  }

  // The answer to the upload: a redirect to the result page (go there), or the form again with
  // its message (put the new page's main part in place of this one's).
  function answered(form, xhr) {
    var url = xhr.responseURL;
    if (xhr.status === 200 && url && url !== form.action) {
      window.location.assign(url);
      return;
    }
    var doc = xhr.response;
    var next = doc && doc.querySelector ? doc.querySelector("main") : null;
    var main = document.querySelector("main");
    if (next && main) {
      document.title = doc.title;
      main.replaceWith(document.adoptNode(next));
      next.focus();
    } else {
      failed(form, "服务器未能处理此次上传，请刷新页面后重试。");
    }
  }

  function failed(form, text) {
    show(form.querySelector("[data-upload-error]"), text);
    var status = form.querySelector("[data-upload-status]");
    if (status) { status.hidden = true; }
    var button = form.querySelector("button[type=submit]");
    if (button) { button.disabled = false; }
  }

  function upload(event, form) {
    if (!window.FormData || !window.XMLHttpRequest) { return; }
    var input = form.querySelector("input[type=file]");
    var file = input && input.files ? input.files[0] : null;
    var max = parseInt(form.getAttribute("data-max-bytes") || "0", 10);
    event.preventDefault();
    show(form.querySelector("[data-upload-error]"), "");
    if (file && max && file.size > max) {
      failed(form, "文件超过允许的大小（最大 " + sizeText(max) + "），未上传。请把名单拆成几个较小的文件分批导入。");
      return;
    }
    var status = form.querySelector("[data-upload-status]");
    var bar = form.querySelector("progress");
    var message = form.querySelector("[data-upload-message]");
    var button = form.querySelector("button[type=submit]");
    var data = new FormData(form);  // in the form's order: the CSRF field before the file
    var xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.responseType = "document";
    xhr.upload.addEventListener("progress", function (e) {
      if (!e.lengthComputable || !bar) { return; }
      bar.max = e.total;
      bar.value = e.loaded;
      show(message, "已上传 " + Math.floor((e.loaded / e.total) * 100) + "%");
    });
    xhr.upload.addEventListener("load", function () {
      if (bar) { bar.value = bar.max; }
      show(message, "上传完成，正在校验并入库，请稍候……");
    });
    xhr.addEventListener("load", function () { answered(form, xhr); });
    xhr.addEventListener("error", function () {
      failed(form, "上传中断（网络问题，或文件超过服务器允许的大小），请检查后重试。");
    });
    if (status) { status.hidden = false; }
    if (bar) { bar.value = 0; }
    show(message, "正在上传……");
    if (button) { button.disabled = true; }
    xhr.send(data);
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement) || event.defaultPrevented) { return; }
    if (form.hasAttribute("data-upload")) {
      upload(event, form);
      return;
    }
    var once = form.querySelector("button[data-once]");
    if (once) {
      if (form.getAttribute("data-sent")) {
        event.preventDefault();
        return;
      }
      form.setAttribute("data-sent", "1");
      window.setTimeout(function () { once.disabled = true; }, 0);  // after the form's data is taken
    }
  });
}());
