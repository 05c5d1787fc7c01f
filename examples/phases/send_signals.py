# Sends N upgrade signals, 1 s apart, to the pid in PIDFILE, timestamping each right before
# kill(2): send_signals.py PIDFILE N OUT (one "<pid> <unix time>" line per signal in OUT).
import os, sys, time, signal
pidfile, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(out, 'w') as f:
    for i in range(n):
        pid = int(open(pidfile).read())
        t = time.time()
        os.kill(pid, signal.SIGUSR2)
        f.write(f'{pid} {t:.6f}\n'); f.flush()
        time.sleep(1)
