# ferry hyperv create v1
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
    foreach ($d in $p.disks) {
        if (-not (Test-Path -LiteralPath $d -PathType Leaf)) {
            Write-Error -Message ('disk file not found: ' + $d) -Category ObjectNotFound -ErrorId 'FerryDiskNotFound'
        }
    }
    $switches = @{}
    foreach ($n in $p.nics) {
        if ($n.switch -and -not $switches.ContainsKey($n.switch)) {
            $s = @(Get-VMSwitch | Where-Object { $_.Name -eq $n.switch })
            if ($s.Count -ne 1) {
                Write-Error -Message ('virtual switch not found: ' + $n.switch) -Category ObjectNotFound -ErrorId 'FerrySwitchNotFound'
            }
            $switches[$n.switch] = $s[0]
        }
    }
    $vm = New-VM -Name $p.name -Generation $p.generation -MemoryStartupBytes $p.memory -NoVHD
    try {
        Set-VM -VM $vm -ProcessorCount $p.cpus -StaticMemory -MemoryStartupBytes $p.memory
        Get-VMNetworkAdapter -VM $vm | Remove-VMNetworkAdapter
        foreach ($n in $p.nics) {
            if ($n.mac) {
                $a = Add-VMNetworkAdapter -VM $vm -Name $n.name -StaticMacAddress $n.mac -Passthru
            } else {
                $a = Add-VMNetworkAdapter -VM $vm -Name $n.name -Passthru
            }
            if ($n.switch) {
                Connect-VMNetworkAdapter -VMNetworkAdapter $a -VMSwitch $switches[$n.switch]
            }
        }
        foreach ($d in $p.disks) {
            Add-VMHardDiskDrive -VM $vm -Path $d
        }
        if ($p.generation -eq 2) {
            $boot = @(Get-VMHardDiskDrive -VM $vm)[0]
            Set-VMFirmware -VM $vm -FirstBootDevice $boot
            if (-not $p.secureBoot) {
                Set-VMFirmware -VM $vm -EnableSecureBoot Off
            }
        }
    } catch {
        # Leave nothing half made; Remove-VM never deletes the disk files.
        Remove-VM -VM $vm -Force
        throw
    }
    Out-FerryResult @{ vms = @(Get-FerryVMInfo $vm) }
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
