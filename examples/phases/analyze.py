# Phases of each upgrade from a run of run.sh: the server log (µs timestamps) and perf sched
# timehist (CPU run time and wait for a CPU of the new process). analyze.py OUT
import re, sys, datetime, statistics
out = sys.argv[1]
ansi = re.compile(r'\x1b\[[0-9;]*m')
def ts(line):
    m = re.match(r'(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z', line)
    if not m: return None
    d = datetime.datetime.strptime(m.group(1)[:26], '%Y-%m-%dT%H:%M:%S.%f').replace(tzinfo=datetime.timezone.utc)
    return d.timestamp()
lines = []
for l in open(f'{out}/log', errors='replace'):
    l = ansi.sub('', l); t = ts(l)
    if t: lines.append((t, l))
sigs = [(int(p), float(t)) for p, t in (x.split() for x in open(f'{out}/signals'))]
def first_after(t0, needle, t1=None):
    for t, l in lines:
        if t >= t0 and needle in l and (t1 is None or t < t1): return t, l
    return None, None
rows = []
for i, (old, tsig) in enumerate(sigs):
    tnext = sigs[i+1][1] if i + 1 < len(sigs) else None
    a, _ = first_after(tsig - 0.001, 'upgrade: starting the new generation', tnext)
    b, _ = first_after(tsig, 'adopted inherited listener', tnext)
    c, _ = first_after(tsig, 'upgraded=true', tnext)
    d, l = first_after(tsig, 'reported ready to the previous generation', tnext)
    e, _ = first_after(tsig, 'new generation is ready; this one stops accepting', tnext)
    newpid = int(re.search(r'pid=(\d+)', l).group(1)) if l else None
    if None in (a, b, c, d, e): print('incomplete', i, a, b, c, d, e); continue
    ms = lambda x: (x - tsig) * 1e3
    rows.append(dict(newpid=newpid, supervisor=ms(a), first_log=ms(b), serving=ms(c), ready_sent=ms(d), ready_seen=ms(e)))
# scheduling of the new process's threads, from perf sched timehist
sched = {}
try:
    th = open(f'{out}/timehist.txt').read().splitlines()
except FileNotFoundError:
    th = []
ev = []
for l in th:
    m = re.match(r'\s*([\d.]+)\s+\[(\d+)\]\s+(.+?)\[(\d+)(?:/(\d+))?\]\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)', l)
    if m:
        t, cpu, name, tid, pid, wait, delay, run = m.groups()
        ev.append((float(t), name.strip(), int(tid), int(pid or tid), float(wait), float(delay), float(run)))
for r in rows:
    p = r['newpid']
    mine = [e for e in ev if e[3] == p]
    if not mine: continue
    t0 = mine[0][0] - mine[0][6]/1e3 - mine[0][5]/1e3
    window = (r['ready_sent'] - 0) / 1e3  # approx: from its first event, as long as signal->ready took
    w = [e for e in mine if e[0] - t0 <= window + 0.0005]
    r['run'] = sum(e[6] for e in w); r['sched_delay'] = sum(e[5] for e in w); r['blocked'] = sum(e[4] for e in w)
    r['threads'] = len({e[2] for e in w})
keys = ['supervisor', 'first_log', 'serving', 'ready_sent', 'ready_seen', 'run', 'sched_delay', 'blocked', 'threads']
print('n=%d' % len(rows))
for k in keys:
    vals = [r[k] for r in rows if k in r]
    if vals: print('%-12s median %7.2f  min %7.2f  max %7.2f' % (k, statistics.median(vals), min(vals), max(vals)))
