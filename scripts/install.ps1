# Ferry agent installer for Windows, served by a Ferry controller at /install.ps1.
#
# Run in an elevated PowerShell the line `ferry tokens create --install-command`
# prints: it pins the controller by its public key (the TLS callback compares
# the SHA-256 of the certificate's SubjectPublicKeyInfo with the token's pin),
# downloads this script and runs it with -Controller and -Token.
#
# The script picks the host's architecture, downloads the agent from the
# controller (same pin), checks its SHA-256 against the controller's
# SHA256SUMS, then runs `ferry-agent.exe install`, which enrols with the
# token, installs the Windows service and starts it. Any failure stops it with
# a message and leaves the host as it was: downloads go to a temporary
# directory that is always removed, and `ferry-agent install` undoes its own
# steps when one fails.
param(
	[string]$Controller = '@@FERRY_CONTROLLER@@',
	[string]$Token = '',
	[string]$Name = '',
	[string]$ServiceName = '',
	# What the controller may run on this host (ferry-agent install --allow-…).
	[switch]$AllowPlanScripts,
	[switch]$AllowExecDrivers
)

$ErrorActionPreference = 'Stop'
# Filled in by the controller that serves this script: its key pin, and the
# DER bytes of its SubjectPublicKeyInfo that precede the key itself (what
# X509Certificate.GetPublicKey returns), so that prefix + key = the SPKI the
# pin hashes.
$FerryPin = '@@FERRY_PIN@@'
$FerrySpkiPrefix = [byte[]](@(@@FERRY_SPKI_PREFIX@@))

function Say([string]$m) { Write-Host "ferry install: $m" }

# Get-FerryTokenPin is the pin a token carries (its fifth field, unpadded
# base64url), in standard base64.
function Get-FerryTokenPin([string]$t) {
	$parts = $t.Trim().Split('.')
	if ($parts.Count -ne 5 -or $parts[0] -ne 'f1' -or $parts[4] -notmatch '^[A-Za-z0-9_-]+$') {
		throw 'ferry install: the token is malformed: want f1.<id>.<secret>.<expiry>.<pin> (copy it whole from ferry tokens create)'
	}
	$p = $parts[4].Replace('-', '+').Replace('_', '/')
	switch ($p.Length % 4) { 2 { $p += '==' } 3 { $p += '=' } }
	$p
}

if ($FerryPin.StartsWith('@@')) { throw 'ferry install: this copy of install.ps1 was not served by a controller: download it from https://CONTROLLER/install.ps1' }
if ($Token -eq '') { throw 'ferry install: -Token is required (ferry tokens create --install-command prints the whole command)' }
$tokenPin = Get-FerryTokenPin $Token
if ($tokenPin -ne $FerryPin) { throw "ferry install: this token was not issued by the controller at $Controller (the token's key pin $tokenPin is not this controller's $FerryPin)" }

$principal = New-Object Security.Principal.WindowsPrincipal([Security.Principal.WindowsIdentity]::GetCurrent())
if (-not $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
	throw 'ferry install: installing a service needs an elevated PowerShell (Run as administrator)'
}

$arch = $env:PROCESSOR_ARCHITEW6432
if (-not $arch) { $arch = $env:PROCESSOR_ARCHITECTURE }
switch ($arch) {
	'AMD64' { $goarch = 'amd64' }
	default { throw "ferry install: no Ferry agent is built for windows/$arch (builds: linux/amd64, linux/arm64, windows/amd64)" }
}
$file = "ferry-agent-windows-$goarch.exe"
$base = "https://$Controller/dist"

$prevProtocol = [Net.ServicePointManager]::SecurityProtocol
$prevCallback = [Net.ServicePointManager]::ServerCertificateValidationCallback
$tmp = Join-Path ([IO.Path]::GetTempPath()) ('ferry-install-' + [guid]::NewGuid().ToString('N'))
New-Item -ItemType Directory -Path $tmp | Out-Null
try {
	# TLS 1.3 (12288): the controller speaks nothing older.
	[Net.ServicePointManager]::SecurityProtocol = $prevProtocol -bor 12288
	# The pin of the server's certificate: base64 SHA-256 of its SPKI. A
	# closure, so the callback sees the pin and prefix wherever .NET runs it.
	[Net.ServicePointManager]::ServerCertificateValidationCallback = {
		param($s, $c)
		$spki = [byte[]]($FerrySpkiPrefix + $c.GetPublicKey())
		[Convert]::ToBase64String([Security.Cryptography.SHA256]::Create().ComputeHash($spki)) -eq $FerryPin
	}.GetNewClosure()
	$web = New-Object Net.WebClient
	Say "this host is windows/$goarch; downloading $file from $Controller"
	try {
		$sums = $web.DownloadString("$base/SHA256SUMS")
		$exe = Join-Path $tmp 'ferry-agent.exe'
		$web.DownloadFile("$base/$file", $exe)
	} catch {
		throw "ferry install: could not download from $base ($($_.Exception.Message)); nothing was installed"
	}
	$want = $null
	foreach ($line in $sums -split "`n") {
		$f = $line.Trim() -split '\s+'
		if ($f.Count -eq 2 -and ($f[1] -eq $file -or $f[1] -eq "*$file")) { $want = $f[0].ToLowerInvariant() }
	}
	if (-not $want) { throw "ferry install: the controller's SHA256SUMS lists no $file; nothing was installed" }
	$got = (Get-FileHash -Algorithm SHA256 -Path $exe).Hash.ToLowerInvariant()
	if ($got -ne $want) { throw "ferry install: checksum mismatch for ${file}: SHA256SUMS says $want, the download hashes to $got; nothing was installed" }
	Say "SHA-256 of $file checked: $got"

	$version = (& $exe version | Out-String).Trim()
	if ($LASTEXITCODE -ne 0) { throw 'ferry install: the downloaded agent does not run on this host; nothing was installed' }
	Say "installing ferry-agent $version (ferry-agent install: enrol, install the service, start it)"
	$installArgs = @('install', '--controller', $Controller, '--token', $Token)
	if ($Name -ne '') { $installArgs += @('--name', $Name) }
	if ($ServiceName -ne '') { $installArgs += @('--service-name', $ServiceName) }
	if ($AllowPlanScripts) { $installArgs += @('--allow-plan-scripts') }
	if ($AllowExecDrivers) { $installArgs += @('--allow-exec-drivers') }
	& $exe @installArgs
	if ($LASTEXITCODE -ne 0) { throw 'ferry install: ferry-agent install failed (its message is above); it undid its steps, nothing was installed' }
	Say "done: ferry-agent $version runs as a service and is enrolled with $Controller"
} finally {
	[Net.ServicePointManager]::ServerCertificateValidationCallback = $prevCallback
	[Net.ServicePointManager]::SecurityProtocol = $prevProtocol
	Remove-Item -Recurse -Force -Path $tmp -ErrorAction SilentlyContinue
}
