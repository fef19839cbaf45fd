# ferry hyperv inspect v1
# Fixed text: every value this script uses comes from the JSON document in
# the environment variable FERRY_HYPERV_PARAMS, parsed by ConvertFrom-Json
# (data only, never evaluated). Nothing is ever spliced into this text.
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$WarningPreference = 'SilentlyContinue'
$InformationPreference = 'SilentlyContinue'
# UTF-8 answers; the result line is written to Console.Out directly so no
# host formatting (line wrapping) touches it. A host without a console may
# refuse the encoding: ASCII answers still parse.
try { [Console]::OutputEncoding = New-Object System.Text.UTF8Encoding $false } catch { }
function Out-FerryResult($r) {
    [Console]::Out.WriteLine('FERRY-RESULT ' + (ConvertTo-Json -InputObject $r -Depth 6 -Compress))
}
function Find-FerryVM([string]$name) {
    # The -Name parameter of Get-VM takes wildcards: list and compare.
    @(Get-VM | Where-Object { $_.Name -eq $name })
}
function Get-FerryVMInfo($vm) {
    $info = $vm | Select-Object Name, @{ n = 'Id'; e = { $_.Id.ToString() } }, @{ n = 'State'; e = { $_.State.ToString() } }
    $disks = @(Get-VMHardDiskDrive -VM $vm | Select-Object -ExpandProperty Path)
    $info | Add-Member -NotePropertyName Disks -NotePropertyValue $disks
    $info
}
try {
    $p = $env:FERRY_HYPERV_PARAMS | ConvertFrom-Json
    # @(): a function's output is unrolled, and $null piped to
    # ForEach-Object would run it once.
    $vms = @(Find-FerryVM $p.name)
    Out-FerryResult @{ vms = @($vms | ForEach-Object { Get-FerryVMInfo $_ }) }
} catch {
    $e = $_
    Out-FerryResult @{ error = @{
            category = $e.CategoryInfo.Category.ToString()
            id       = $e.FullyQualifiedErrorId
            hresult  = $e.Exception.HResult
            type     = $e.Exception.GetType().FullName
            message  = $e.Exception.Message
        } }
    exit 1
}
