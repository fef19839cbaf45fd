    $null = Get-Command -Name Get-VM -Module Hyper-V
    $null = Get-VMHost
    Out-FerryResult @{ switches = @(Get-VMSwitch | Select-Object -ExpandProperty Name) }
