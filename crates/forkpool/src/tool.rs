//! forkpool's name, synopsis and help (`unixtool::Tool`): every layer's
//! one-line messages are written through it.

use unixtool::Tool;

pub const TOOL: Tool = Tool {
    name: "forkpool",
    usage: "forkpool [-v] [-n workers] [-s sig] [-k ms] [-d fd | --notify] [-a ms] [-t ms] [-p symlink] [-S statusfile] [-m rolling|all-at-once|cutover] [-b ms] [--surge k] [--max-age s [--jitter pct]] [--max-rss mib [--rss-samples k]] [--watchdog ms] [-C fifo [--prepare-timeout ms] [--confirm-timeout ms]] [--handoff] [--check-timeout ms] prog...",
    help: "
  -n, --workers N           keep N workers running (default 4)
  -s, --stop-signal SIG     the signal that tells a worker to finish and exit
                            (default TERM; HUP, INT, QUIT, USR1, USR2 or a number)
  -k, --drain MS            a stopped worker still alive after MS ms gets KILL (default 10000)
  -d, --notification-fd FD  a worker is ready when it writes a newline to FD (>= 3)
      --notify              a worker is ready when it sends READY=1 to $NOTIFY_SOCKET
  -a, --ready-after MS      a worker is ready once alive MS ms (default 1000 when
                            neither -d nor --notify is given)
  -t, --ready-timeout MS    a worker must be ready within MS ms (default 30000)
  -p, --pin SYMLINK         resolve SYMLINK at start and at each HUP; each generation
                            runs in the directory it resolved to
  -S, --status FILE         keep FILE up to date with the pool's state (key=value)
  -m, --mode MODE           rolling (default): retire one old worker per new ready one;
                            all-at-once: retire the old generation when the new one is ready;
                            cutover: hold the new generation (SIGSTOP, $FORKPOOL_HOLD_FD)
                            until it is whole and the old one is gone, then release it
  -b, --backoff-max MS      let the wait after failures in a row double up to MS ms
                            (default 1000: one second, as runsv)
      --surge K             at most N+K workers while recycling or in a rolling reload
      --max-age S           recycle a worker after about S seconds (replacement first)
      --jitter PCT          each worker's age is S less a random part of up to PCT% (default 10)
      --max-rss MIB         recycle a worker whose Pss stays over MIB (sampled every second)
      --rss-samples K       ... K samples in a row (default 3)
      --watchdog MS         a ready worker pings every MS ms (empty line on -d, WATCHDOG=1);
                            one that misses gets ABRT, KILL after -k, and is replaced
  -C, --control FIFO        (-m cutover) read prepare, commit [UNIX_TIME], abort from FIFO:
                            a new generation held ready until a commit switches to it
      --prepare-timeout MS  a prepare neither committed nor aborted in MS ms aborts
                            (default 60000)
      --handoff             a retiring worker may hand its kept connections to the new
                            generation on $FORKPOOL_HANDOFF_FD (SCM_RIGHTS, one a message)
      --confirm-timeout MS  (-m cutover -C) park the old generation at each switch
                            (TSTP, warm) until confirm or revert on FIFO; no
                            confirm in MS ms reverts to it
      --check-timeout MS    an in-place upgrade's check (USR2) must end within MS ms
                            (default 30000)
  -v, --verbose             one info line per transition
  -h, --help                this text
  -V, --version             the version
",
};
