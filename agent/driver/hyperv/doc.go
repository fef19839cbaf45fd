// Package hyperv is the Hyper-V hypervisor driver: it creates, starts, stops,
// pauses, reports and removes virtual machines on the Windows host the agent
// runs on, through the Hyper-V PowerShell module (New-VM, Set-VM,
// Add-VMHardDiskDrive, Add-VMNetworkAdapter, Connect-VMNetworkAdapter,
// Start-VM, Stop-VM, Suspend-VM, Resume-VM, Get-VM, Remove-VM).
//
// # How values reach PowerShell
//
// No value (machine name, disk path, switch name, MAC, adapter name) is ever
// written into script text. Each operation is a fixed script, embedded in the
// binary from scripts/*.ps1 (a shared prelude, the operation's body and a
// shared error epilogue), and sent as
//
//	powershell.exe -NoLogo -NoProfile -NonInteractive -OutputFormat Text -EncodedCommand <base64 of the fixed UTF-16LE text>
//
// The command line therefore depends only on the operation. The values go in
// one environment variable, FERRY_HYPERV_PARAMS, holding a JSON document made
// by encoding/json (every control character, quote and backslash escaped, so
// the variable never holds a NUL or a raw newline). The script reads it with
// ConvertFrom-Json, which parses data and never evaluates it, and passes the
// values to cmdlets as parameter values of variables ($p.name, $p.disks …).
// PowerShell never re-parses a variable's value as code, so quotes, $, ;,
// backticks, newlines or $(…) in a name stay characters of that name. Where a
// cmdlet's name parameter takes wildcards (Get-VM -Name, Get-VMSwitch -Name),
// the script lists and compares with -eq instead, and every later call names
// the machine by its Id (a GUID the driver read back). Disk paths are tested
// with Test-Path -LiteralPath.
//
// # Answers
//
// Each script prints exactly one line "FERRY-RESULT <json>" made by
// ConvertTo-Json of properties picked with Select-Object; anything else on
// stdout (banners, stray warnings) is ignored. A failure prints
// {"error":{category,id,hresult,type,message}} from the ErrorRecord and exits
// 1; the driver classifies it by the documented ErrorCategory and a few
// HRESULTs into driver.Error kinds (see errors.go). The driver reads only
// properties Microsoft documents; each is cited where it is decoded.
//
// Nothing in this package has run against a real Hyper-V host: its tests run
// on Linux against a fake powershell.exe that records what it was sent and
// prints synthetic answers (testdata/synthetic-*). docs/drivers.md says what
// that does and does not prove.
package hyperv
