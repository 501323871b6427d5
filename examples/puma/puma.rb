# puma.rb: part of each release (run reads it from the release forkpool pinned:
# `puma -C puma.rb config.ru`).
#
# The socket: systemd socket activation. tcplisten -s puts it on descriptor 3
# with LISTEN_FDS=1; forkpool sets LISTEN_PID to each server's own pid; puma
# takes an activated socket for the `bind` that names its address, which
# tcplisten tells in TCPLOCALIP and TCPLOCALPORT (puma would close an
# activated socket that no bind names, and bind a new one).
#
# One puma process per forkpool slot, in single mode (threads, no puma
# master): forkpool is the pool and the reload. (Cluster mode with one worker
# per slot was tried first: under 4 keep-alive clients a TERMed puma master
# took 1.9 to 13 s to exit, its worker 0.2 to 7.7 s; a single-mode puma 1.2 to
# 1.8 s. A cutover waits for the old servers to be gone.)
#
# Readiness and the hold: puma's accept thread itself, right before its accept
# loop (Forkpool::ReadyWhenAccepting, below: single mode loads the app, takes
# the socket, starts that thread, then accepts): READY=1 to forkpool's
# NOTIFY_SOCKET, then a wait on FORKPOOL_HOLD_FD (a byte, or end of file), so
# the new server never accepts before the old generation is gone (forkpool -m
# cutover), and accepts at once when released. A release that fails to load
# makes puma exit before it is ready: the reload fails at once.
# NOTIFY_SOCKET is taken out of puma's environment here (puma would try its
# own systemd integration).
#
# Stop: forkpool's TERM is puma's graceful stop (it closes the socket,
# finishes the requests in hand, answers the next request of each keep-alive
# connection with Connection: close, exits).
#
# The verified switch's park (forkpool --confirm-timeout sends TSTP): puma
# parks itself (Forkpool.park, below): it stops accepting, finishes what it
# serves, says PARKED=1; a revert's CONT makes it accept again, a confirm's
# TERM stops it without one more accept.
#
# queue_requests false: no keep-alive (every answer says Connection: close,
# as unicorn's do). With puma's keep-alive (queue_requests true, its default)
# the stop can hang: the accept loop waits in ThreadPool#wait_until_not_full
# while every thread is busy, a thread serving a busy keep-alive client serves
# it on inline while nothing is queued, so the loop never reads the stop
# command. Measured (tests/tests/deploy_servers.rs,
# puma_keepalive_clients_more_than_threads_stop_by_themselves, and the
# 4-client deploys): 8 keep-alive clients, 5 threads: each of 3 deploys waited
# for forkpool's drain deadline (-k 30 s, then KILL); 4 clients: 2 of 8
# deploys, and 2 requests timed out (force_shutdown_after does not help: the
# stop never begins). Tried: a patch here that wakes that wait at the stop
# (from a thread: the TERM trap cannot take the mutex) and refuses accepts
# after it: 8 + 8 deploys clean in one run, but in the next runs an old puma
# still waited for the drain deadline (1 run of 2, 8 clients) and a verified
# switch's revert reset a connection (a fresh connection in puma's reactor
# when it shut down): not 0, so keep-alive stays off.
require 'socket'

environment 'production'
threads 1, 5
queue_requests false
bind "tcp://#{ENV.fetch('TCPLOCALIP', '127.0.0.1')}:#{ENV.fetch('TCPLOCALPORT', '8000')}"

require 'puma/server'

module ::Forkpool
  NOTIFY = ENV.delete('NOTIFY_SOCKET')

  # A datagram to forkpool's NOTIFY_SOCKET (READY=1, PARKED=1).
  def self.notify(what)
    return unless NOTIFY
    addr = NOTIFY.start_with?('@') ? "\0#{NOTIFY[1..]}" : NOTIFY
    s = Socket.new(:UNIX, :DGRAM)
    begin
      s.send(what, 0, Socket.pack_sockaddr_un(addr))
    ensure
      s.close
    end
  end

  # READY=1, then the hold: called by puma's accept thread itself, right
  # before its accept loop (ReadyWhenAccepting). `check` is puma's own wake-up
  # pipe: a stop that comes while held ends the wait, and the loop then reads
  # the stop before any listener (it looks at that pipe first).
  def self.ready_and_hold(check = nil)
    notify('READY=1')
    fd = ENV['FORKPOOL_HOLD_FD'] or return
    begin
      hold = IO.for_fd(fd.to_i, autoclose: false)
      ready, = IO.select([hold, check].compact)
      hold.read_nonblock(1, exception: false) if ready.include?(hold)
    rescue SystemCallError, IOError
      nil
    end
  end

  # Readiness from the thread that accepts, when it is about to: puma 5.6
  # single mode loads the app, binds, starts this thread, and only then
  # accepts; said at load (config.ru), READY=1 came before the bind and the
  # thread, and a released server could take a second or more on a busy
  # machine to accept its first connection (a verified switch's check then
  # got no answer within its window and reverted a good release).
  module ReadyWhenAccepting
    def handle_servers
      ::Forkpool.park_traps(self)
      ::Forkpool.ready_and_hold(@check)
      super
    end

    # puma's loop reads a byte of its wake-up pipe here; after a park
    # command (PARK), the accept thread parks itself (Forkpool.park).
    def handle_check
      loop do
        return true if super # a stop, halt or restart: the loop ends
        return false unless ::Forkpool.park_asked
        # parked until CONT (false: accept again) or until the wake-up pipe
        # has a byte (true: read it, above: at a confirm it is the stop)
        return false unless ::Forkpool.park(@check, @thread_pool)
      end
    end
  end

  # The verified switch's park (forkpool --confirm-timeout): forkpool sends
  # the old generation TSTP and releases the new one once each old server
  # no longer accepts. TSTP's default action stops the process at once, but
  # a confirm then continues it with its TERM pending, and puma's accept
  # thread accepted a connection or two before the TERM trap (on the main
  # thread) stopped it: answers of the old release after the new one. So
  # puma cooperates: the TSTP trap asks the accept thread to park (a byte on
  # puma's own wake-up pipe, read before any listener); that thread then
  # accepts nothing, waits until no thread serves a request, says PARKED=1
  # (forkpool then sends STOP), and waits for either a CONT (a revert: it
  # accepts again) or a byte on the wake-up pipe (a confirm: forkpool sends
  # TERM before the CONT, and puma's TERM trap writes its stop command there
  # before the CONT trap runs; Ruby runs pending traps lowest signal first).
  PARK = 'P'
  UNPARK_R, UNPARK_W = IO.pipe
  @park_asked = nil
  @conts = 0

  class << self
    attr_reader :park_asked
  end

  # Only under forkpool (NOTIFY_SOCKET given): run by hand, Ctrl-Z stops puma.
  def self.park_traps(server)
    return unless NOTIFY
    Signal.trap('TSTP') do
      @park_asked = @conts
      server.send(:notify_safely, PARK)
    end
    Signal.trap('CONT') do
      @conts += 1
      UNPARK_W.write_nonblock('.', exception: false)
    end
  end

  # The accept thread, parked: true when `check` has a byte to read, false
  # at a CONT that came after the TSTP.
  def self.park(check, pool)
    asked = @park_asked
    @park_asked = nil
    said = false
    loop do
      return false if @conts > asked
      if !said && pool.busy_threads.zero?
        notify('PARKED=1')
        said = true
      end
      ready, = IO.select([check, UNPARK_R], nil, nil, said ? nil : 0.002)
      next unless ready
      return true if ready.include?(check)
      UNPARK_R.read_nonblock(64, exception: false)
    end
  end
end
Puma::Server.prepend(::Forkpool::ReadyWhenAccepting)
