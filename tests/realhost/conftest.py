"""Prints the real-host suite's per-method summary at the end of the run (see test_realhost.py)."""


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    summary = getattr(config, "_realhost_summary", None)
    if not summary:
        return
    tr = terminalreporter
    tr.section("real-host summary")
    host = summary.get("_host", {})
    tr.write_line(f"WebUI {host.get('url')} pid {host.get('pid')}, idle RSS at start {host.get('idle_rss_gib')} GiB; "
                  "per training (GiB): RSS before, lowest, peak above it, extra = peak - lowest")
    tr.write_line(f"{'method':<13}{'state':<8}{'train s':>8}  {'modules':<9}{'0.5/1.0/1.5':<22}{'changed':<9}"
                  f"{'base==':<7}{'before':>7}{'floor':>7}{'peak':>7}{'extra':>7}{'txt2img peak':>13}")
    for method, s in summary.items():
        if method.startswith("_"):
            continue
        imgs = s.get("images") or {}
        diffs = s.get("mean_abs_diff_vs_without") or {}
        changed = "-" if not imgs else ("yes" if diffs and len(diffs) == len(imgs) and all(diffs.values())
                                         else "no/part")
        same = s.get("without_network_byte_identical")
        tr.write_line(f"{method:<13}{str(s.get('state')):<8}{str(s.get('train_seconds')):>8}  "
                      f"{str(s.get('modules_matched', '-')):<9}{'/'.join(imgs.values()) or '-':<22}{changed:<9}"
                      f"{'-' if same is None else ('yes' if same else 'NO'):<7}{str(s.get('idle_rss_gib')):>7}"
                      f"{str(s.get('floor_rss_gib')):>7}{str(s.get('peak_rss_gib')):>7}{str(s.get('extra_rss_gib')):>7}"
                      f"{str(s.get('peak_rss_txt2img_gib', '-')):>13}")
        if s.get("error"):
            tr.write_line(f"  {method} error: {str(s['error'])[:500]}")
