; Inno Setup script: installs the one-folder build (dist\hearth, from `make dist` on Windows) for
; the current user, with a Start menu entry and an optional desktop icon. No admin rights needed:
; Hearth writes its settings, models and logs to the user's folders, never to {app}.
;   iscc installers\windows\hearth.iss        -> dist\Hearth-Setup-<version>.exe
; Not run on this project's Linux machines: checked by reading against the Inno Setup 6 docs.
#define AppVersion GetEnv("HEARTH_VERSION")
#if AppVersion == ""
  #define AppVersion "0.1.0"
#endif

[Setup]
AppId={{6D3F2B0E-8C1A-4E7B-9D55-2A1F0C9E4B71}
AppName=Hearth
AppVersion={#AppVersion}
AppPublisher=Hearth contributors
DefaultDirName={autopf}\Hearth
DefaultGroupName=Hearth
PrivilegesRequired=lowest
PrivilegesRequiredOverridesAllowed=dialog
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
OutputDir=..\..\dist
OutputBaseFilename=Hearth-Setup-{#AppVersion}
SetupIconFile=..\..\resources\icons\hearth.ico
UninstallDisplayIcon={app}\hearth.exe
Compression=lzma2/max
SolidCompression=yes
WizardStyle=modern

[Tasks]
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"; Flags: unchecked

[Files]
Source: "..\..\dist\hearth\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{group}\Hearth"; Filename: "{app}\hearth.exe"
Name: "{group}\Uninstall Hearth"; Filename: "{uninstallexe}"
Name: "{autodesktop}\Hearth"; Filename: "{app}\hearth.exe"; Tasks: desktopicon

[Run]
Filename: "{app}\hearth.exe"; Description: "{cm:LaunchProgram,Hearth}"; Flags: nowait postinstall skipifsilent
