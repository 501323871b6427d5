# config.ru: one release of a Rack app, as puma serves it (plain Rack, no
# framework).
#
# The release is the working directory (forkpool -p pins `current` and starts
# each server there): RELEASE names it, read once at load, and every answer
# says it (X-Release, and the page's data-release). A release with a file
# BROKEN answers 500 to everything (still saying its id): the release that
# boots and serves, but serves errors, for the deploy's check to catch.
release = File.read('RELEASE').strip
broken = File.exist?('BROKEN')
page = '<!doctype html><html><head><title>release %s</title></head>' \
       "<body data-release=\"%s\"><h1>Release %s</h1></body></html>\n" % [release, release, release]

run(lambda do |env|
  if broken
    [500, { 'Content-Type' => 'text/plain', 'X-Release' => release }, ["release #{release} is broken\n"]]
  elsif env['PATH_INFO'] == '/release'
    # the deploy's check (deploy-release -c URL)
    [200, { 'Content-Type' => 'text/plain', 'X-Release' => release }, ["#{release}\n"]]
  else
    [200, { 'Content-Type' => 'text/html', 'X-Release' => release }, [page]]
  end
end)
