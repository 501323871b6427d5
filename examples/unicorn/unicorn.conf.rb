# unicorn.conf.rb: part of each release (run reads it from the release forkpool
# pinned: `unicorn -c unicorn.conf.rb`).
#
# The socket: UNICORN_FD=0 (set by run) makes the master inherit tcplisten's
# socket on descriptor 0 instead of binding one; no `listen` line here.
#
# One unicorn master with one worker per forkpool slot: forkpool is the pool
# (and the reload); the master only keeps its worker. preload_app: the app is
# loaded in the master before the fork, so a release that fails to load makes
# the master exit and the reload fail at once (without it the master would
# respawn a crashing worker until forkpool's -t deadline).
#
# Readiness: forkpool --notify gives the master NOTIFY_SOCKET. It is taken out
# of the master's environment here, and the worker (the process that accepts)
# says READY=1 in after_worker_ready, right before its first accept (forkpool
# counts a datagram from a descendant of the process it started).
#
# The hold (forkpool -m cutover): forkpool stops the master's whole process
# group once it is ready, and the worker waits on FORKPOOL_HOLD_FD (a byte, or
# end of file) before its first accept, so it never accepts before the old
# generation is gone.
#
# Stop: forkpool -s QUIT (unicorn's graceful stop: the master tells its worker,
# which closes the socket, finishes the request in hand and exits). TERM is
# unicorn's immediate stop.
require 'socket'

worker_processes 1
preload_app true
timeout 30

notify = ENV.delete('NOTIFY_SOCKET')

after_worker_ready do |server, worker|
  server.logger.info("worker=#{worker.nr} ready")
  if notify
    addr = notify.start_with?('@') ? "\0#{notify[1..]}" : notify
    s = Socket.new(:UNIX, :DGRAM)
    begin
      s.send('READY=1', 0, Socket.pack_sockaddr_un(addr))
    ensure
      s.close
    end
  end
  if (fd = ENV['FORKPOOL_HOLD_FD'])
    begin
      IO.for_fd(fd.to_i, autoclose: false).read(1)
    rescue SystemCallError
      nil
    end
  end
end
